"""jsonargparse's nested refusal messages, read down to one line: the flag, the value, what is valid.

jsonargparse explains a refused value as a tree: the union of classes a key may hold, each class's
own refusal, each type tried. The user needs the innermost branch that names their flag:

    Parser key "model": ... Problem with given class_path 'dyt_lab.training.ViTClassifier':
        Parser key "alpha_init": ... - Expected a <class 'float'> ... Given value: abc
    ->  --model.alpha_init 'abc': expected a float or None

jsonargparse has no structured form of these errors (they are strings built as they unwind), so
this reads the text. Anything it does not recognise is kept, joined on one line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path

from dyt_lab.errors import ConfigError

KEY = re.compile(r'Parser key "([^"]+)"')
NESTED = re.compile(r"NestedArg\(key='([^']+)', val='(.*)'\)")
EXPECTED = re.compile(r"^-?\s*Expected a (?!path but|dot import path)(.+)$")
CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted")
UNKNOWN_KEY = re.compile(r"does not accept option '([^']+)'")
UNKNOWN_FLAG = re.compile(r"unrecognized arguments: (\S+)")
# Lines that only describe the tree, never the problem.
STRUCTURE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
             "Given value:", "Problem with given class_path", "Expected a path but", "Expected a dot import path",
             "tip:", "usage:")


def expected_types(texts: list[str]) -> str:
    """``["<class 'int'>", "<class 'NoneType'>"]`` -> ``an int or None``; Literals merge into one ``one of``."""
    literals, names = [], []
    for text in texts:
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text.strip())
        if literal:
            literals.append(literal.group(1))
            continue
        name = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text.strip())
        article = "an" if name[:1].lower() in "aeiou" else "a"
        names.append("None" if name == "NoneType" else f"{article} {name}" if re.fullmatch(r"\w+", name) else name)
    choices = list(dict.fromkeys(([f"one of {', '.join(literals)}"] if literals else []) + names))
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def innermost_block(lines: list[str]) -> list[str]:
    """The lines under the last ``Parser key`` line: the deepest key's own refusal."""
    starts = [i for i, line in enumerate(lines) if KEY.search(line)]
    if not starts:
        return lines
    first = starts[-1]
    rest = KEY.split(lines[first])[-1].lstrip(": ").strip()  # 'Parser key "config": File does not exist: ...'
    block = [rest] if rest else []
    for line in lines[first + 1:]:
        if line.strip() and indent(line) <= indent(lines[first]):
            break
        block.append(line)
    return block


def close_names(name: str, class_path: str | None) -> str:
    """", did you mean 'norm'?" for an argument ``class_path`` has, or ''."""
    if not class_path:
        return ""
    try:
        module, _, attr = class_path.rpartition(".")
        names = list(inspect.signature(getattr(importlib.import_module(module), attr)).parameters)
    except Exception:  # not importable: the message already says so
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; its arguments: {', '.join(names)}"


def condensed(message: str, prefix: str = "--") -> str:
    """jsonargparse's refusal ``message`` as one line: flag, given value, what would be valid."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) <= 1 and not KEY.search(message):
        return message.strip()
    keys = KEY.findall(message)
    nested = NESTED.findall(message)
    flag = keys[0] if keys else ""
    if nested:  # --model.optimizer.init_args.lr fast: the top key plus the nested path, as typed
        flag = f"{flag}.{nested[-1][0]}"
    elif len(keys) > 1:
        flag = ".".join(dict.fromkeys(keys))
    block = innermost_block(lines)
    # "Given value: x" in a Union's tree; "Expected a typing.Literal['a', 'b']. Got value: x" for a plain Literal
    given = next((m.group(1) for m in (re.search(r"Given value: (.*)", line) for line in block) if m), None)
    if given is None:
        given = next((m.group(1) for m in (re.search(r"\. Got value: (.*)$", line) for line in block) if m), None)
    if given is None and nested:
        given = nested[-1][1]
    if given is not None:
        given = re.sub(r"\. Got value: .*$", "", given).strip()
    class_paths = CLASS_PATH.findall(message)
    reasons = []
    for line in block:
        text = line.strip().lstrip("- ").strip()
        text = re.sub(r"^Type .* expects a function or a callable class: ", "", text)
        text = re.sub(r"\. Got value: .*$", "", text)
        if text and not text.startswith(STRUCTURE) and not EXPECTED.match(text) and not KEY.search(text):
            reasons.append(text)
    expected = [re.sub(r"\. Got value: .*$", "", m.group(1))
                for m in (EXPECTED.match(line.strip()) for line in block) if m]
    unknown = UNKNOWN_OPTION.search(message)
    if unknown:
        # the class is known only for its own arguments (--model.nrom), not for nested ones
        # (--model.optimizer.init_args.x names no class_path of the optimizer)
        owner = class_paths[-1] if class_paths and flag.count(".") <= 1 else None
        where = f" for {owner}" if owner else ""
        return (f"{prefix}{flag}: no such argument '{unknown.group(1)}'{where}"
                f"{close_names(unknown.group(1), owner)}")
    value = f" '{given}'" if given is not None and not given.startswith(("Namespace(", "NestedArg(")) else ""
    if reasons:
        return f"{prefix}{flag}{value}: {'; '.join(dict.fromkeys(reasons))}"
    if expected:
        return f"{prefix}{flag}{value}: expected {expected_types(expected)}"
    return " ".join(line.strip() for line in lines)


def unknown_hint(message: str, keys: list[str], flags: list[str]) -> str:
    """What to type instead of an unknown config key (``keys``) or flag (``flags``): the closest, or them all."""
    unknown_key, unknown_flag = UNKNOWN_KEY.search(message), UNKNOWN_FLAG.search(message)
    if unknown_key:
        close = difflib.get_close_matches(unknown_key.group(1), keys, n=1)
        return f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(keys)}"
    if unknown_flag:
        close = difflib.get_close_matches(unknown_flag.group(1), flags, n=1)
        return f" (did you mean {close[0]}?)" if close else "; see --help for the flags"
    return ""


def flag_values(argv: list[str], *names: str) -> list[str]:
    """Every value given to the flags ``names`` in argv (``--name X`` or ``--name=X``), in order, for the
    commands that must read one flag before the parser runs; the parser, which reads the last, still decides."""
    values = []
    for arg, following in zip(argv, [*argv[1:], None]):
        flag, equals, value = arg.partition("=")
        if flag in names and (equals or following is not None):
            values.append(value if equals else following)
    return values


def check_config_files(args: list[str], what: str = "--config") -> None:
    """A --config file that is not valid YAML: one line naming the file and the place, not jsonargparse's tree.

    jsonargparse reads the file's text and names ``--`` (no file) and a line of that text.
    """
    import yaml

    for path in flag_values(args, "--config", "-c"):
        if not Path(path).is_file():
            continue  # a missing file: the parser says so, naming it
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{what} '{path}' is not valid YAML{where}: "
                              f"{getattr(err, 'problem', None) or err}") from None
