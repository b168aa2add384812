"""Deterministic, redistributable synthetic sample with real semantic structure in item text.

Twelve latent genres each own a vocabulary. Every item has a genre mix (a main genre, sometimes a
second one); its title and one-sentence description are built from its genres' words and its
categories are the genre names. Users have sparse genre preferences; interactions are drawn from
preference x item popularity (long tail), with increasing timestamps per user. A user's items
therefore share genre words far more than chance, so item text predicts interactions, and the
items nobody interacted with (cold catalogue items) can still be recommended from their text.

    python -m data.sample --out data/sample [--users 300 --items 600 --interactions 15000 --seed 0]
    python -m data.sample --out data/sample-spans --spans 4   # interactions/span-{1..4}/ by time

Same arguments => byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from data import prepare
from schema import contract

# genre -> (title adjectives, title nouns, description phrases)
GENRES: Dict[str, Tuple[List[str], List[str], List[str]]] = {
    "Sci-Fi": (
        ["Galactic", "Quantum", "Stellar", "Cosmic", "Orbital", "Android", "Nebula", "Warp"],
        ["Voyage", "Starship", "Galaxy", "Planet", "Robot", "Colony", "Signal", "Wormhole"],
        ["a starship crew", "a rogue android", "a distant galaxy", "an alien signal", "a lost colony"],
    ),
    "Fantasy": (
        ["Enchanted", "Mystic", "Ancient", "Elven", "Arcane", "Cursed", "Dragon", "Eternal"],
        ["Kingdom", "Sword", "Wizard", "Dragon", "Throne", "Prophecy", "Realm", "Amulet"],
        ["a young wizard", "an ancient dragon", "a cursed kingdom", "a magic sword", "an elven prophecy"],
    ),
    "Romance": (
        ["Sweet", "Tender", "Secret", "Summer", "Eternal", "Golden", "Parisian", "Forbidden"],
        ["Love", "Kiss", "Heart", "Wedding", "Promise", "Valentine", "Letters", "Affair"],
        ["two lovers", "a summer wedding", "a secret affair", "a forbidden love", "a broken heart"],
    ),
    "Horror": (
        ["Haunted", "Bloody", "Dark", "Sinister", "Cursed", "Silent", "Undead", "Wicked"],
        ["Ghost", "Zombie", "Asylum", "Nightmare", "Crypt", "Demon", "Graveyard", "Scream"],
        ["a haunted house", "a zombie outbreak", "a vengeful ghost", "an abandoned asylum", "a demon"],
    ),
    "Comedy": (
        ["Crazy", "Silly", "Wacky", "Hilarious", "Awkward", "Goofy", "Funny", "Clumsy"],
        ["Roommates", "Vacation", "Prank", "Party", "Wedding", "Sitcom", "Mixup", "Bachelor"],
        ["two clumsy roommates", "a wild party", "a hilarious prank", "a disastrous vacation", "a goofy mixup"],
    ),
    "Western": (
        ["Dusty", "Wild", "Lone", "Outlaw", "Frontier", "Rusty", "Desert", "Savage"],
        ["Sheriff", "Cowboy", "Saloon", "Ranch", "Gunslinger", "Canyon", "Stagecoach", "Bandit"],
        ["a lone gunslinger", "a frontier sheriff", "a desert ranch", "an outlaw gang", "a stagecoach robbery"],
    ),
    "Crime": (
        ["Deadly", "Criminal", "Corrupt", "Undercover", "Hidden", "Stolen", "Midnight", "Fatal"],
        ["Heist", "Detective", "Mafia", "Robbery", "Witness", "Cartel", "Alibi", "Verdict"],
        ["an undercover detective", "a bank heist", "a mafia family", "a stolen diamond", "a corrupt cop"],
    ),
    "War": (
        ["Brave", "Fallen", "Iron", "Final", "Bloody", "Heroic", "Distant", "Burning"],
        ["Battle", "Soldier", "Front", "Siege", "Regiment", "Trenches", "Bomber", "Platoon"],
        ["a brave platoon", "a desperate siege", "soldiers in the trenches", "a bomber crew", "a fallen regiment"],
    ),
    "Documentary": (
        ["True", "Hidden", "Natural", "Untold", "Wild", "Real", "Frozen", "Living"],
        ["Planet", "Ocean", "History", "Nature", "Wildlife", "Science", "Climate", "Expedition"],
        ["wildlife in the ocean", "a scientific expedition", "the untold history", "climate and nature",
         "frozen landscapes"],
    ),
    "Animation": (
        ["Magical", "Tiny", "Brave", "Colorful", "Happy", "Little", "Dancing", "Friendly"],
        ["Bunny", "Puppy", "Toys", "Kitten", "Penguin", "Adventure", "Forest", "Friends"],
        ["a tiny bunny", "talking toys", "a brave penguin", "friendly forest animals", "a little puppy"],
    ),
    "Musical": (
        ["Singing", "Dancing", "Broadway", "Rhythm", "Jazz", "Melodic", "Golden", "Starlit"],
        ["Song", "Melody", "Stage", "Chorus", "Ballet", "Symphony", "Concert", "Tango"],
        ["a Broadway stage", "a jazz singer", "a dancing chorus", "a ballet company", "a symphony orchestra"],
    ),
    "Sports": (
        ["Winning", "Underdog", "Champion", "Fast", "Golden", "Rookie", "Final", "Olympic"],
        ["Champion", "Team", "Season", "Stadium", "Coach", "Marathon", "Knockout", "Playoffs"],
        ["an underdog team", "a rookie coach", "the championship season", "an Olympic marathon",
         "a boxing knockout"],
    ),
}
GENRE_NAMES = list(GENRES)

_TITLE_TEMPLATES = [
    "The {a} {n}",
    "{a} {n}",
    "The {n} of the {a} {n2}",
    "{n} and {n2}",
    "Return of the {a} {n}",
    "A {a} {n}",
]
_DESC_TEMPLATES = [
    "A {a} story about {p}.",
    "{P} and {q} collide in this {a} tale.",
    "When {p} meets {q}, nothing stays the same.",
    "An {a} journey following {p}.",
]
_ROMAN = ["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"]
_T0 = 1_577_836_800  # 2020-01-01T00:00:00Z


def _a_an(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def _make_items(rng: np.random.Generator, n_items: int) -> Tuple[pd.DataFrame, np.ndarray]:
    """Catalogue + genre mix matrix (n_items x n_genres)."""
    g = len(GENRE_NAMES)
    mix = np.zeros((n_items, g))
    rows = []
    seen_titles = set()
    for i in range(n_items):
        main = int(rng.integers(g))
        second = None
        if rng.random() < 0.35:
            second = int(rng.choice([k for k in range(g) if k != main]))
            w = rng.uniform(0.2, 0.4)
            mix[i, main], mix[i, second] = 1.0 - w, w
        else:
            mix[i, main] = 1.0
        adj, nouns, phrases = GENRES[GENRE_NAMES[main]]
        sec = GENRES[GENRE_NAMES[second]] if second is not None else GENRES[GENRE_NAMES[main]]
        tmpl = _TITLE_TEMPLATES[int(rng.integers(len(_TITLE_TEMPLATES)))]
        a = adj[int(rng.integers(len(adj)))]
        n = nouns[int(rng.integers(len(nouns)))]
        n2 = sec[1][int(rng.integers(len(sec[1])))]
        if n2 == n:
            n2 = nouns[(nouns.index(n) + 1) % len(nouns)]
        title = tmpl.format(a=a, n=n, n2=n2)
        if tmpl.startswith("A {a}"):
            title = _a_an(a) + title[1:]
        if title in seen_titles:
            for r in _ROMAN:
                if f"{title} {r}" not in seen_titles:
                    title = f"{title} {r}"
                    break
            else:
                title = f"{title} ({i})"
        seen_titles.add(title)
        dt = _DESC_TEMPLATES[int(rng.integers(len(_DESC_TEMPLATES)))]
        p = phrases[int(rng.integers(len(phrases)))]
        q = sec[2][int(rng.integers(len(sec[2])))]
        if q == p:
            q = phrases[(phrases.index(p) + 1) % len(phrases)]
        da = adj[int(rng.integers(len(adj)))].lower()
        desc = dt.format(a=da, p=p, q=q, P=p[0].upper() + p[1:])
        if dt.startswith("An {a}") or dt.startswith("A {a}"):
            desc = _a_an(da) + desc[desc.index(" "):]
        cats = [GENRE_NAMES[main]] + ([GENRE_NAMES[second]] if second is not None else [])
        rows.append(
            {
                contract.ITEM_ID: f"i{i + 1:04d}",
                contract.TITLE: title,
                contract.CATEGORIES: "|".join(cats),
                contract.DESCRIPTION: desc,
            }
        )
    return pd.DataFrame(rows, columns=list(contract.ITEM_COLUMNS)), mix


def _first_occurrences(draws: np.ndarray) -> np.ndarray:
    """The distinct values of ``draws`` in the order they first appear."""
    _, first = np.unique(draws, return_index=True)
    return draws[np.sort(first)]


def _draw_items(rng: np.random.Generator, n: int, pref: np.ndarray, mix: np.ndarray, popularity: np.ndarray,
                warm: np.ndarray, warm_cdf: np.ndarray) -> np.ndarray:
    """``n`` distinct items for one user, each drawn with probability proportional to popularity x affinity^2
    among the items not drawn yet (affinity = the item's genre mix . the user's genre preferences).

    Drawing one at a time without replacement is the same as drawing with replacement and skipping repeats, and
    a draw from popularity x affinity^2 is a draw from popularity kept with probability (affinity / max)^2. So
    the cost is O(n), not O(catalogue), per user; only when repeats pile up (n near the warm catalogue's size)
    is the rest drawn from the weights left, which continues the same process.
    """
    bound = float(pref.max()) ** 2  # a mix row sums to 1, so affinity <= max(pref)
    found = np.empty(0, dtype=np.int64)
    for _ in range(8):
        need = n - len(found)
        if need <= 0:
            break
        proposals = warm[np.minimum(np.searchsorted(warm_cdf, rng.random(16 * need + 64) * warm_cdf[-1],
                                                    side="right"), len(warm) - 1)]
        affinity = mix[proposals] @ pref
        kept = proposals[rng.random(len(proposals)) * bound < affinity**2]
        found = _first_occurrences(np.concatenate([found, kept]))
    found = found[:n]
    if len(found) < n:
        weights = popularity * (mix @ pref) ** 2
        weights[found] = 0.0
        rest = rng.choice(len(weights), size=n - len(found), replace=False, p=weights / weights.sum())
        found = np.concatenate([found, rest])
    return found


def generate(
    n_users: int = 300,
    n_items: int = 600,
    n_interactions: int = 15_000,
    seed: int = 0,
    cold_fraction: float = 0.1,
) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(interactions, items)`` DataFrames (interactions without history).

    ``cold_fraction`` of the items get no interactions at all but stay in the catalogue.
    Each user interacts with an item at most once; the total is close to ``n_interactions``
    (capped by what the warm catalogue allows).
    """
    if n_users < 1 or n_items < 2 or n_interactions < n_users:
        raise ValueError("need n_users >= 1, n_items >= 2 and n_interactions >= n_users")
    rng = np.random.default_rng(seed)
    items, mix = _make_items(rng, n_items)
    g = mix.shape[1]

    n_cold = int(round(n_items * cold_fraction))
    n_cold = min(n_cold, n_items - 1)
    cold = rng.choice(n_items, size=n_cold, replace=False) if n_cold else np.array([], dtype=int)
    warm = np.setdiff1d(np.arange(n_items), cold)

    # Long-tail popularity over warm items (Zipf-like on a random permutation).
    ranks = rng.permutation(len(warm)) + 1
    popularity = np.zeros(n_items)
    popularity[warm] = 1.0 / ranks**1.0

    # Sparse user tastes: 1-3 favourite genres carry most of the mass.
    prefs = np.full((n_users, g), 0.02)
    for u in range(n_users):
        k = int(rng.integers(1, 4))
        fav = rng.choice(g, size=k, replace=False)
        prefs[u, fav] += rng.dirichlet(np.ones(k))
    prefs /= prefs.sum(axis=1, keepdims=True)

    # Per-user activity: lognormal, scaled to the requested total, at least 3 each.
    act = rng.lognormal(mean=0.0, sigma=0.7, size=n_users)
    max_per_user = max(1, min(len(warm), 5 * n_interactions // n_users))
    counts = np.clip(np.round(act / act.sum() * n_interactions), 3, max_per_user).astype(int)
    counts = np.minimum(counts, len(warm))

    warm_cdf = np.cumsum(popularity[warm])
    item_ids = items[contract.ITEM_ID].to_numpy()
    rows_i, rows_t, rows_r = [], [], []
    for u in range(n_users):
        chosen = _draw_items(rng, int(counts[u]), prefs[u], mix, popularity, warm, warm_cdf)
        n = len(chosen)
        affinity = mix[chosen] @ prefs[u]  # in [0, 1]
        start = _T0 + int(rng.integers(0, 180 * 86_400))
        gaps = rng.exponential(scale=1.5 * 86_400, size=n).astype(np.int64) + 60
        # Ratings: higher for better-matching items, 0.5 steps in [0.5, 5].
        r = np.clip(np.round((2.5 + 2.5 * affinity + rng.normal(0, 0.7, n)) * 2) / 2, 0.5, 5.0)
        rows_i.append(item_ids[chosen])
        rows_t.append(start + np.cumsum(gaps))
        rows_r.append(r)
    user_ids = np.array([f"u{u + 1:04d}" for u in range(n_users)], dtype=object)
    interactions = pd.DataFrame(
        {
            contract.USER_ID: np.repeat(user_ids, [len(c) for c in rows_i]),
            contract.ITEM_ID: np.concatenate(rows_i),
            contract.TIMESTAMP: np.concatenate(rows_t).astype(np.int64),
            contract.RATING: np.concatenate(rows_r).astype(float),
        }
    )
    return interactions, items


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.sample",
        description=(
            "Write a deterministic synthetic sample (12 genres with their own title/description "
            "vocabulary, long-tail popularity, ~10%% of catalogue items never interacted with) in "
            "the data-contract layout: OUT/interactions/{train,eval}/interactions.csv, OUT/items/items.csv. "
            "Same arguments give byte-identical files."
        ),
    )
    parser.add_argument("--out", required=True, help="output directory, e.g. data/sample")
    parser.add_argument("--users", type=int, default=300, help="number of users (default 300)")
    parser.add_argument("--items", type=int, default=600, help="catalogue size (default 600)")
    parser.add_argument("--interactions", type=int, default=15_000,
                        help="approximate number of interactions (default 15000)")
    parser.add_argument("--cold-fraction", type=float, default=0.1,
                        help="fraction of items with no interactions at all (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="per-user fraction of latest interactions in eval (default 0.2)")
    parser.add_argument("--new-user-fraction", type=float, default=0.05,
                        help="seeded fraction of users kept entirely in eval, the new_users slice (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--spans", type=int, default=0, help=prepare.SPANS_HELP)
    args = parser.parse_args(argv)
    try:
        inter, items = generate(args.users, args.items, args.interactions, args.seed, args.cold_fraction)
        summary = prepare.write_contract(inter, items, args.out, test_fraction=args.test_fraction,
                                         new_user_fraction=args.new_user_fraction, seed=args.seed,
                                         spans=args.spans)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(prepare.summary_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
