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
GROUP_KEY = re.compile(r"Group '([^']+)' does not accept option '([^']+)'")
UNKNOWN_FLAG = re.compile(r"unrecognized arguments: (\S+)")
SUBTYPE_CLASS = re.compile(r"<class '((?:\w+\.)+\w+)'>")  # a Union's class with a module: a mapping of its arguments
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
    try:
        names = list(inspect.signature(owner_class(class_path)).parameters)
    except Exception:  # not importable (None): the message already says so
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; its arguments: {', '.join(names)}"


def owner_class(class_path: str | None):
    """The class ``class_path`` names, or None if it cannot be imported (the message already says so)."""
    if not class_path:
        return None
    try:
        module, _, attr = class_path.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    except Exception:
        return None


def argument_doc(owner, name: str) -> str:
    """The docstring line of ``owner``'s argument ``name`` (what ``--help`` shows for it), or ''."""
    from docstring_parser import parse  # jsonargparse[signatures] reads --help from docstrings with it

    for doc in (inspect.getdoc(getattr(owner, "__init__", None)), inspect.getdoc(owner)):
        found = [p.description for p in parse(doc or "").params if p.arg_name == name and p.description]
        if found:
            return found[0]
    return ""


def mapping_expected(block: list[str], owner_path: str | None, key: str) -> str | None:
    """``a NormConversion mapping {to, kinds, sites} or None, e.g. {to: dyt}`` where a Union's class was never
    tried because the value given is no mapping (jsonargparse then lists only the other types); else None.

    The example is the ``{...}`` of the argument's own docstring line in its ``owner_path`` class.
    """
    subtypes = next((line for line in block if line.strip().startswith("Subtypes:")), "")
    classes = [c for c in (owner_class(path) for path in SUBTYPE_CLASS.findall(subtypes)) if inspect.isclass(c)]
    if not classes:
        return None
    cls = classes[0]
    try:
        arguments = ", ".join(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return None
    none = " or None" if "NoneType" in subtypes else ""
    example = re.search(r"\{.*\}", argument_doc(owner_class(owner_path), key)) if owner_path else None
    return f"a {cls.__name__} mapping {{{arguments}}}{none}" + (f", e.g. {example.group(0)}" if example else "")


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
    owner = class_paths[-1] if class_paths and flag.count(".") <= 1 else None
    mapping = mapping_expected(block, owner, flag.rsplit(".", 1)[-1]) if given is not None else None
    if mapping:
        return f"{prefix}{flag}{value}: expected {mapping}"
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


def config_key_hint(message: str, keys: list[str]) -> str:
    """`` (did you mean 'n_trials'?)`` for a config file's unknown key, among the parser's dotted ``keys``, or
    the valid ones; '' for another message. jsonargparse says ``Option 'n_trial' is not accepted`` at the top
    and ``Group 'objective' does not accept option 'metirc'`` (``'overides.x'`` for a mapping) below it."""
    group, option = GROUP_KEY.search(message), UNKNOWN_OPTION.search(message)
    if not group and not option:
        return ""
    prefix, name = (f"{group.group(1)}.", group.group(2)) if group else ("", option.group(1))
    names = list(dict.fromkeys(k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix) and k != prefix))
    close = difflib.get_close_matches(name.split(".")[0], names, n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f"; valid keys{f' of {prefix[:-1]}' if prefix else ''}: {', '.join(names)}"


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
