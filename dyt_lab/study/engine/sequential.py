"""``dyt-lab study confirm NAME --seeds auto --max_seeds N``: fresh seeds in batches until every comparison is decided.

A confirmation sized in advance either wastes seeds on a clear difference or stops short of an equivalence.
Here each *look* adds ``batch`` fresh seeds to the confirmation (``confirm --extend``) and tests every
comparison it declares (each confirmed configuration against the reference: over seeds x test images where
runs saved their predictions, else over seeds) as one Holm family; it stops when every comparison is
better, worse or equivalent, or when ``max_seeds`` have run.

Looking after every batch and stopping on success inflates the error rate unless each look spends only part
of it. Look k tests at the level released by the Lan-DeMets (1983) O'Brien-Fleming-type spending function
at its information fraction t_k = seeds so far / max_seeds,

    alpha*(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)),    look k tests at alpha*(t_k) - alpha*(t_{k-1}),

which spends almost nothing early (a first look at a quarter of the seeds tests at about 0.0001) and most at
the last look. Testing each look at its increment alone is valid whatever the looks' correlation, since the
increments sum to alpha (a union bound over looks); the exact group-sequential boundaries, which integrate
that correlation, would be a little less strict. The looks, their levels and verdicts are recorded in the
confirmation's study attribute SEQUENTIAL and printed.
"""

from __future__ import annotations

import math
from pathlib import Path

from scipy import stats

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import SEQUENTIAL
from dyt_lab.study.report.statistics import ALPHA

DECIDED = ("better", "worse", "equivalent")


def spent(t: float, alpha: float = ALPHA) -> float:
    """Alpha spent by information fraction ``t`` (0 < t <= 1): O'Brien-Fleming-type, Lan-DeMets."""
    return float(2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))


def look_levels(batch: int, max_seeds: int, alpha: float = ALPHA) -> list[tuple[int, float]]:
    """(seeds after the look, the level it tests at) for every look up to ``max_seeds``; the levels sum to alpha."""
    sizes = list(range(batch, max_seeds, batch)) + [max_seeds]
    levels, before = [], 0.0
    for n in sizes:
        now = spent(n / max_seeds, alpha)
        levels.append((n, now - before))
        before = now
    return levels


def check_sequential(batch: int, max_seeds: int | None) -> int:
    """``--max_seeds`` and ``--batch`` of ``--seeds auto``, or a one-line ConfigError."""
    if max_seeds is None:
        raise ConfigError("--seeds auto needs --max_seeds N: the most fresh seeds it may run (e.g. --max_seeds 20)")
    if batch < 2:
        raise ConfigError(f"--batch {batch}: give 2 or more seeds a look (an interval needs two)")
    if max_seeds < batch:
        raise ConfigError(f"--max_seeds {max_seeds} is below --batch {batch}: give --max_seeds {batch} or more")
    return max_seeds


def confirm_until_decided(name: str, top: int | None, max_seeds: int | None, batch: int = 5, first_seed: int = 10,
                          root: str = "studies", storage: str | None = None, **options) -> None:
    """Run ``NAME.confirm`` look by look (seeds first_seed, first_seed + 1, ...) until every comparison is decided."""
    from dyt_lab.study.definition.space import saved_space
    from dyt_lab.study.definition.storage import find_storage, load_existing
    from dyt_lab.study.definition.study_file import SPEC_FILE, confirmation_name, load_spec
    from dyt_lab.study.engine.confirm import confirm
    from dyt_lab.study.report.confirmation import confirmation_verdicts
    from dyt_lab.study.report.seed_runs import seed_run_table

    max_seeds = check_sequential(batch, max_seeds)
    if not (Path(root) / name / SPEC_FILE).is_file():
        raise ConfigError(f"no study '{name}' to confirm: {Path(root) / name / SPEC_FILE} does not exist (run it first)")
    margin = load_spec(["--config", str(Path(root) / name / SPEC_FILE)], prog="dyt-lab study confirm").margin
    looks = []
    for index, (n_seeds, level) in enumerate(look_levels(batch, max_seeds)):
        confirm(name, top, f"{first_seed}..{first_seed + n_seeds - 1}", root=root, storage=storage,
                extend=index > 0, **options)
        search = load_existing(name, find_storage(name, root, storage))
        confirmation = confirmation_name(name, options.get("tag"))
        study = load_existing(confirmation, find_storage(confirmation, root, storage))
        space = saved_space(Path(root) / name)
        table, scale = confirmation_verdicts(study, space, seed_run_table(search, space),
                                             margin, alpha=level)
        if table.empty:
            raise ConfigError(f"--seeds auto: study '{name}' has no reference configuration in its confirmation, so "
                              "there is no comparison to decide; give a study with `reference`, or fixed --seeds")
        verdicts = dict(zip(table["label"], table["verdict"]))
        looks.append({"seeds": n_seeds, "level": level, "over": scale, "verdicts": verdicts})
        study.set_user_attr(SEQUENTIAL, {"max_seeds": max_seeds, "batch": batch, "spending": "obrien_fleming",
                                              "looks": looks})
        print(f"look {index + 1}: {n_seeds} seeds, level {level:.2g} over {scale}: "
              + "; ".join(f"{label}: {verdict}" for label, verdict in verdicts.items()), flush=True)
        if all(v in DECIDED for v in verdicts.values()):
            print(f"every comparison decided after {n_seeds} seeds (of at most {max_seeds})")
            return
    print(f"not every comparison decided after {max_seeds} seeds: those left are inconclusive at this budget")
