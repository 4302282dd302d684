"""Write a real translation task as TSV files: English number words -> French number words.

Both sides come from the num2words library (its English and French rule sets, neither written
here): cardinals ("one hundred and twenty-three thousand, four hundred and fifty-six" ->
"cent vingt-trois mille quatre cent cinquante-six"), ordinals ("...fifty-sixth" -> "...cinquante-
sixième") and amounts of euros ("twelve euro, fifty cents" -> "douze euros et cinquante centimes").
The numbers are drawn log-uniformly from a seed, so the same seed always writes the same files;
only lines whose source and target are both 30-150 characters long are kept, and a source is in
one split only (train, valid, test).

    uv run python scripts/make_num2words_data.py --out data/num2words --seed 0

num2words is in the dev dependency group (uv sync installs it); its version is pinned by uv.lock,
which fixes the texts.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from functional_transformer.data import write_tsv  # noqa: E402

MIN_CHARS, MAX_CHARS = 30, 150
# The kind of each line, by weight: the same number reads differently as each.
KINDS = {"cardinal": 5, "ordinal": 3, "currency": 2}


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def make_pair(rng: random.Random) -> tuple[str, str]:
    """One (English, French) pair of a random kind and number."""
    from num2words import num2words

    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    if kind == "currency":
        amount = round(_log_uniform(rng, 1, 1e6), 2)
        return (
            num2words(amount, lang="en", to="currency", currency="EUR"),
            num2words(amount, lang="fr", to="currency", currency="EUR"),
        )
    number = int(_log_uniform(rng, 1e3, 1e9))
    return num2words(number, lang="en", to=kind), num2words(number, lang="fr", to=kind)


def make_splits(sizes: dict[str, int], seed: int) -> dict[str, list[tuple[str, str]]]:
    """{split: pairs} with sizes[split] pairs each, every source in one split only."""
    try:
        import num2words  # noqa: F401
    except ImportError:
        sys.exit("this script needs num2words: uv sync (it is in the dev group), or pip install num2words")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for name, size in sizes.items():
        pairs = []
        while len(pairs) < size:
            source, target = make_pair(rng)
            if source in seen or not all(MIN_CHARS <= len(text) <= MAX_CHARS for text in (source, target)):
                continue
            seen.add(source)
            pairs.append((source, target))
        splits[name] = pairs
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.tsv, valid.tsv and test.tsv")
    parser.add_argument("--seed", type=int, default=0, help="seed of the numbers drawn (default 0)")
    parser.add_argument("--n-train", type=int, default=20_000, help="training pairs (default 20000)")
    parser.add_argument(
        "--n-valid", type=int, default=500, help="held-out pairs for training's evaluations (default 500)"
    )
    parser.add_argument("--n-test", type=int, default=1000, help="test pairs, for ft eval only (default 1000)")
    args = parser.parse_args(argv)
    splits = make_splits({"train": args.n_train, "valid": args.n_valid, "test": args.n_test}, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        write_tsv(args.out / f"{name}.tsv", pairs)
        print(f"{args.out / f'{name}.tsv'}: {len(pairs)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
