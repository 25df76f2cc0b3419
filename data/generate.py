"""Write the sample inputs in data/ (deterministic: the same files every time).

    python data/generate.py                      # data/reviews.jsonl (2,000 product reviews)
    python data/generate.py --rows 20000 --out /tmp/reviews.jsonl

Each review is about 400 characters of text assembled from phrase lists, with a stable id.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import orjson

PRODUCTS = [
    "kettle",
    "blender",
    "desk lamp",
    "backpack",
    "headphones",
    "office chair",
    "coffee grinder",
    "rice cooker",
    "phone case",
    "running shoes",
    "tent",
    "monitor",
]
OPENERS = {
    "positive": [
        "I love this {p}.",
        "Great {p}, exactly what I needed.",
        "Excellent {p} for the price.",
        "This {p} is amazing.",
    ],
    "negative": [
        "This {p} broke after a week.",
        "Terrible {p}, I want a refund.",
        "Poor quality {p}, very disappointed.",
        "Worst {p} I have ever bought.",
    ],
    "neutral": [
        "The {p} arrived on Tuesday.",
        "It is a {p} like any other.",
        "I bought this {p} for my office.",
        "The {p} does what the box says.",
    ],
}
MIDDLES = [
    "Shipping took four days and the box was intact.",
    "The colour matches the photos on the listing.",
    "Setup took about ten minutes with the included manual.",
    "My partner has been using it every morning since it came.",
    "It is a little heavier than I expected from the description.",
    "The instructions were printed in three languages.",
    "Customer service answered my email within a day.",
    "I compared it with two other models before ordering.",
]
CLOSERS = {
    "positive": ["Would recommend it to friends.", "Happy with it, perfect for daily use."],
    "negative": ["Would not buy again.", "Avoid it; mine stopped working."],
    "neutral": ["Time will tell how it holds up.", "No strong feelings either way."],
}


def review(rng: random.Random, i: int) -> dict[str, object]:
    mood = rng.choice(["positive", "positive", "negative", "neutral"])
    product = rng.choice(PRODUCTS)
    parts = [rng.choice(OPENERS[mood]).format(p=product)]
    for middle in rng.sample(MIDDLES, len(MIDDLES)):
        if sum(len(x) for x in parts) >= 330:
            break
        parts.append(middle)
    parts.append(rng.choice(CLOSERS[mood]))
    return {
        "id": f"r{i:07d}",
        "product": product,
        "stars": rng.randint(1, 5),
        "text": " ".join(parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "reviews.jsonl"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "wb") as f:
        for i in range(1, args.rows + 1):
            f.write(orjson.dumps(review(rng, i)) + b"\n")


if __name__ == "__main__":
    main()
