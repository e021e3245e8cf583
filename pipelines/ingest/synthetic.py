"""A seeded synthetic stand-in for the Home Depot data, with the truth behind its judgments.

Tests, demos and benchmarks need data of any size without ../shared, and a known answer to check:
each query is built from an anchor product's type and attributes, each judged pair gets a latent
relevance in [0, 1] from how well the item matches that intent (kept in lake.root/truth.parquet), and
its grade is the mean of three noisy raters on the 1..3 scale. Vectorized: 1M items take seconds.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import Progress

from pipelines.atomic import write_parquet
from pipelines.lake import Lake
from pipelines.text import normalize_query, query_id, query_split

FIRST_ITEM_ID = 100001  # like Home Depot's product_uid
DEFAULT_AS_OF = pd.Timestamp("2024-01-01", tz="UTC")  # fixed, so a seed always gives the same bytes
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # model number prefixes
SIZES = {  # size kind: sizes written the Home Depot way
    "in": "1/4 in.|3/8 in.|1/2 in.|3/4 in.|1 in.|1-1/4 in.|2 in.", "gal": "1 qt.|1-gal.|2-gal.|5-gal.",
    "ft": "3 ft.|6 ft.|8 ft.|10 ft.|25 ft.|50 ft.|100 ft.", "pack": "2-Pack|4-Pack|10-Pack|50-Pack",
    "width": "18 in.|24 in.|30 in.|36 in.|48 in.|60 in.", "volt": "12-Volt|18-Volt|20-Volt|40-Volt",
    "panel": "12 in. x 12 in.|24 in. x 36 in.|36 in. x 80 in.|2 ft. x 4 ft.|4 ft. x 8 ft.",
    "watt": "40-Watt|60-Watt|75-Watt|100-Watt", "cuft": "1.6 cu. ft.|1.9 cu. ft.|18.7 cu. ft.|25 cu. ft.",
}
POOLED = ("brand", "feature", "material", "colour")  # drawn from the item's department
DEPARTMENTS = (  # per department: brands, features, materials, colours, product type:size kind
    ("Delta|Moen|KOHLER|Glacier Bay|SharkBite|Pfister", "Single-Handle|Pull-Down|Touchless|WaterSense",
     "Brass|Copper|PVC|Stainless Steel|Plastic", "Chrome|Brushed Nickel|Oil-Rubbed Bronze|Matte Black",
     "Kitchen Faucet:in|Shower Head:in|Push-to-Connect Fitting:in|Toilet Seat:pack|Water Heater:gal"),
    ("BEHR|Rust-Oleum|Glidden|Valspar|DAP", "Premium|Textured|Quick Dry|Low-VOC|Exterior",
     "Latex|Oil-Based|Acrylic|Water-Based", "Tugboat|Ultra Pure White|Navy Blue|Gray|Beige|Red",
     "Deck Stain:gal|Interior Paint:gal|Spray Paint:pack|Wood and Concrete Coating:gal|Caulk:pack"),
    ("DEWALT|Milwaukee|RIDGID|Ryobi|Husky|Makita", "Brushless|Compact|Heavy Duty|Cordless|Portable",
     "Steel|Fiberglass|Aluminum|Carbon Steel", "Yellow|Red|Orange|Black|Teal",
     "Drill:volt|Circular Saw:volt|Tool Box:width|Step Ladder:ft|Drill Bit Set:pack|Wet/Dry Vac:gal"),
    ("Leviton|Lutron|Commercial Electric|Southwire|Eaton", "Tamper-Resistant|Smart|Decora|GFCI|Outdoor",
     "Plastic|Copper|Aluminum|Steel", "White|Almond|Ivory|Black|Gray",
     "Outlet:pack|Dimmer Switch:pack|Extension Cord:ft|Wire:ft|Circuit Breaker:pack"),
    ("Philips|Feit Electric|Hampton Bay|Home Decorators Collection|Progress Lighting",
     "Dimmable|Smart|Outdoor|Indoor/Outdoor|Energy Star", "Glass|Aluminum|Steel|Plastic",
     "Brushed Nickel|Bronze|White|Matte Black|Daylight",
     "LED Light Bulb:watt|Ceiling Fan:width|Flush Mount Light:in|Vanity Light:width|Landscape Light:pack"),
    ("Vigoro|Scotts|Toro|Suncast|Lifetime|Tenax", "Heavy Duty|Self-Propelled|Lightweight|UV-Resistant",
     "Vinyl|Rubber|Polypropylene|Cedar|Resin", "Green|Brown|Black|Tan",
     "Garden Hose:ft|Lawn Mower:volt|Deer Barrier:ft|Storage Shed:panel|Planter:in|Fence Panel:panel"),
    ("Simpson Strong-Tie|Quikrete|Owens Corning|MD Building Products|Everbilt",
     "12-Gauge|Heavy Duty|Fire-Rated|Moisture-Resistant|Galvanized",
     "Pressure-Treated Pine|Concrete|Galvanized Steel|Aluminum|Vinyl", "Natural|Gray|White|Silver",
     "Angle:pack|Joist Hanger:pack|Aluminum Sheet:panel|Insulation:panel|Lumber:ft"),
    ("Whirlpool|GE|Samsung|LG|Frigidaire|Maytag", "Convection|Energy Star|Smart|Fingerprint Resistant",
     "Steel|Glass|Porcelain Enamel", "Stainless Steel|Black Stainless|White|Black|Slate",
     "Over the Range Microwave:cuft|French Door Refrigerator:cuft|Dishwasher:width|Electric Range:width"),
    ("Pergo|TrafficMaster|LifeProof|MSI|Home Decorators Collection",
     "Waterproof|Hand-Scraped|Click Lock|Glazed|Non-Slip", "Oak|Vinyl Plank|Laminate|Porcelain|Ceramic",
     "Gray|Natural|Walnut|Beige", "Floor Tile:panel|Area Rug:panel|Stair Tread:width|Transition Strip:ft"),
    ("Kwikset|Schlage|Everbilt|Gorilla|3M", "Keyed|Smart|Heavy Duty|Self-Closing|Clear",
     "Zinc|Steel|Brass|Stainless Steel", "Satin Nickel|Black|Polished Brass|Chrome",
     "Door Knob:pack|Deadbolt:pack|Door Hinge:in|Wood Screw:in|Wood Glue:gal|Hook:pack"),
)
TEMPLATES = (  # title shapes seen in the real catalog
    "{brand} {feature} {size} {material} {type} in {colour} #{model}",
    "{brand} {model} {feature} {type} {size} {material} {colour}",
    "{brand} {size} {colour} {material} {feature} {type} ({model})",
)
ATTRIBUTES = ("brand", "feature", "material", "colour", "size")  # what a query may ask for besides the type
KIND_P = {"head": 0.25, "attribute": 0.4, "tail": 0.25, "model": 0.1}  # query intents
SLOT_P = {"near": 0.35, "type": 0.35, "department": 0.15, "random": 0.15}  # where judged items come from
RATERS, RATER_NOISE = 3, 0.45  # rater noise is on the 1..3 grade scale


@dataclass(frozen=True)
class SyntheticReport:
    """What was generated and where it was written."""

    n_items: int
    n_queries: int
    n_judgments: int
    seed: int
    paths: dict[str, Path]  # items, queries, judgments, truth


def generate_synthetic(lake: Lake, n_items: int = 2000, n_queries: int = 500, seed: int = 0,
                       as_of: pd.Timestamp = DEFAULT_AS_OF,
                       judgments_per_query: int = 6, progress: bool = False) -> SyntheticReport:
    """Write a catalog, queries with Zipf-like traffic and graded judgments, plus truth.parquet.

    The same seed gives byte-identical files; as_of stamps every row.
    """
    if n_items < 1 or n_queries < 1 or judgments_per_query < 1:
        raise ValueError("n_items, n_queries and judgments_per_query must be positive")
    rng = np.random.default_rng(seed)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("catalog", total=4)
        vocab, items, titles = _catalog(rng, n_items)
        bar.update(task, advance=1, description="queries")
        queries = _queries(rng, vocab, items, n_queries)
        bar.update(task, advance=1, description="judgments")
        pairs = _judgments(rng, items, queries, judgments_per_query)
        bar.update(task, advance=1, description="writing")
        item_ids = _numbered(FIRST_ITEM_ID, n_items)
        qids = pa.array(queries["query_id"]).take(pairs["q"].to_numpy())
        judged = item_ids.take(pairs["item"].to_numpy())
        arrow = pd.arrays.ArrowExtensionArray
        paths = {
            "items": lake.write("items", pd.DataFrame({"item_id": arrow(item_ids), "title": arrow(titles),
                                                       "event_timestamp": as_of})),
            "queries": lake.write("queries", queries.assign(event_timestamp=as_of)),
            "judgments": lake.write("judgments", pd.DataFrame({
                "judgment_id": arrow(_numbered(1, len(pairs))), "query_id": arrow(qids),
                "item_id": arrow(judged), "relevance": pairs["grade"], "event_timestamp": as_of})),
            "truth": lake.root / "truth.parquet",
        }
        truth = pa.table({"query_id": qids, "item_id": judged,
                          "latent_relevance": pairs["latent"].to_numpy()})  # float32, see _latent
        write_parquet(truth, paths["truth"])
        bar.update(task, advance=1, description="done")
    return SyntheticReport(n_items, len(queries), len(pairs), seed, paths)


def _numbered(first: int, n: int) -> pa.Array:
    """Ids as numeric strings first, first + 1, ... (built in Arrow: a million in milliseconds)."""
    return pc.cast(pa.array(np.arange(first, first + n)), pa.string())


def _catalog(rng: np.random.Generator, n: int) -> tuple[dict[str, pa.Array], pd.DataFrame, pa.Array]:
    """Vocabularies (arrays of names), per-item attribute codes, and the item titles."""
    depts = [[part.split("|") for part in dept] for dept in DEPARTMENTS]
    types = [(n, k, d) for d, dept in enumerate(depts) for n, k in (e.split(":") for e in dept[4])]
    sizes = {kind: text.split("|") for kind, text in SIZES.items()}
    names = {name: sorted({v for dept in depts for v in dept[i]}) for i, name in enumerate(POOLED)}
    names["size"] = sorted({size for values in sizes.values() for size in values})
    popularity = 1.0 / np.arange(1, len(types) + 1) ** 0.8  # some product types are far more common
    item_type = rng.permutation(len(types))[rng.choice(len(types), size=n, p=popularity / popularity.sum())]
    codes = {"type": item_type, "department": np.array([d for _, _, d in types])[item_type]}
    for i, name in enumerate(POOLED):
        pools = [np.searchsorted(names[name], dept[i]) for dept in depts]
        codes[name] = _pick(rng, pools, codes["department"])
    pools = [np.searchsorted(names["size"], sizes[kind]) for _, kind, _ in types]
    codes["size"] = _pick(rng, pools, item_type)
    names |= {"type": [name for name, _, _ in types], "prefix": [x + y for x in _LETTERS for y in _LETTERS]}
    codes["prefix"] = rng.integers(len(names["prefix"]), size=n)
    codes["number"] = rng.permutation(n) + 100  # prefix-number is a unique model number, like SC-141
    vocab = {name: pa.array(values) for name, values in names.items()}
    items = pd.DataFrame(codes)
    words = {k: vocab[k].take(codes[k]) for k in (*ATTRIBUTES, "type")} | {"model": _model(vocab, items)}
    template = pa.array(rng.integers(len(TEMPLATES), size=n))
    return vocab, items, pc.choose(template, *(_format(fmt, words) for fmt in TEMPLATES))


def _model(vocab: dict[str, pa.Array], items: pd.DataFrame) -> pa.Array:
    return pc.binary_join_element_wise(vocab["prefix"].take(items["prefix"].to_numpy()),
                                       pc.cast(pa.array(items["number"].to_numpy()), pa.string()), "-")


def _format(fmt: str, words: dict[str, pa.Array]) -> pa.Array:
    """Vectorized fmt.format(**words); fmt is space-separated tokens such as 'in', '{type}', '#{model}'."""
    tokens = []
    for token in fmt.split(" "):
        pieces = [p for literal, field, _, _ in string.Formatter().parse(token)
                  for p in (literal, words[field] if field else "") if len(p)]
        tokens.append(pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0])
    return pc.binary_join_element_wise(*tokens, " ")


def _pick(rng: np.random.Generator, pools: list[np.ndarray], group: np.ndarray) -> np.ndarray:
    """For each row, a uniform draw from the pool of its group (pools hold vocabulary codes)."""
    sizes = np.array([len(p) for p in pools])
    pick = (rng.random(len(group)) * sizes[group]).astype(np.int64)
    return np.concatenate(pools)[(np.cumsum(sizes) - sizes)[group] + pick]


def _queries(rng: np.random.Generator, vocab: dict[str, pa.Array], items: pd.DataFrame,
             n: int) -> pd.DataFrame:
    """n distinct queries with query_id, split and a Zipf-like frequency: generic ones are the head."""
    kept: list[pd.DataFrame] = []
    seen = pd.Series([], dtype=object)  # normalized texts kept so far
    rate = 1.0  # share of a batch that is new; head queries repeat, so it falls as n grows
    while len(seen) < n:
        need = n - len(seen)
        batch = _query_batch(rng, vocab, items, int(need / rate * 1.2) + 256)
        fresh = batch[~batch["query_norm"].duplicated() & ~batch["query_norm"].isin(seen)]
        if fresh.empty:  # a tiny catalog has only so many distinct queries
            raise ValueError(f"cannot draw {n} distinct queries from {len(items)} items; found {len(seen)}")
        rate = max(len(fresh) / len(batch), 0.01)
        kept.append(fresh.head(need))
        seen = pd.concat([seen, kept[-1]["query_norm"]])
    q = pd.concat(kept, ignore_index=True)
    specificity = q["n_attrs"] + 2 * (q["kind"] == "model") + q["typo"] + rng.random(len(q))
    rank = np.argsort(np.argsort(specificity.to_numpy(), kind="stable")) + 1  # 1 = most generic
    q["frequency"] = np.maximum(1, 100_000 / rank**1.05 * rng.lognormal(0.0, 0.3, len(q))).astype(np.int64)
    q["query_id"] = [query_id(t) for t in q["query_text"]]
    q["split"] = [query_split(t) for t in q["query_text"]]
    return q


def _query_batch(rng: np.random.Generator, vocab: dict[str, pa.Array], items: pd.DataFrame,
                 n: int) -> pd.DataFrame:
    """Queries built from random anchor items: its type plus some of its attributes, or its model."""
    anchor = rng.integers(len(items), size=n)
    a = items.iloc[anchor]
    kind = rng.choice(list(KIND_P), size=n, p=list(KIND_P.values()))
    n_attrs = np.select([kind == "attribute", kind == "tail"], [rng.integers(1, 3, n), rng.integers(3, 6, n)])
    shuffled = np.argsort(rng.random((n, len(ATTRIBUTES))), axis=1)  # the first n_attrs are asked for
    use = shuffled.argsort(axis=1) < n_attrs[:, None]
    word = {k: pc.utf8_lower(vocab[k].take(a[k].to_numpy())) for k in (*ATTRIBUTES, "type")}
    undotted = pc.utf8_rtrim(pc.replace_substring(word["size"], ". ", " "), characters=".")  # 1/2 in
    word["size"] = pc.if_else(rng.random(n) < 0.5, word["size"], undotted)
    suffix = pc.if_else(pc.match_substring_regex(word["type"], "(ch|sh|x)$"), "es", "s")
    plural = pc.binary_join_element_wise(word["type"], suffix, "")
    keep = pc.or_(pa.array(rng.random(n) < 0.8), pc.ends_with(word["type"], "s"))
    text = pc.if_else(keep, word["type"], plural)
    for p in reversed(range(len(ATTRIBUTES))):  # attributes in shuffled order, then the type
        attribute = pc.choose(pa.array(shuffled[:, p]), *(word[k] for k in ATTRIBUTES))
        text = pc.if_else(p < n_attrs, pc.binary_join_element_wise(attribute, text, " "), text)
    model = pc.utf8_lower(_model(vocab, a))
    model = pc.if_else(rng.random(n) < 0.7, model, pc.replace_substring(model, "-", ""))
    model = pc.if_else(rng.random(n) < 0.5, model, pc.binary_join_element_wise(word["brand"], model, " "))
    text = pc.if_else(kind == "model", model, text)
    cased = rng.random(n)  # raw spellings vary in ways normalization removes
    text = pc.if_else(cased > 0.05, text, pc.utf8_capitalize(text))
    spaced = pc.binary_join_element_wise(" ", pc.replace_substring(text, " ", "  "), "")
    text = pc.if_else(cased < 0.97, text, spaced)
    texts = text.to_pylist()
    typo = (kind != "model") & (rng.random(n) < 0.12)
    for i, r in zip(np.flatnonzero(typo), rng.random((int(typo.sum()), 3)), strict=True):
        texts[i] = _typo(texts[i], r)
    return pd.DataFrame({"query_text": texts, "query_norm": [normalize_query(t) for t in texts], "kind": kind,
                         "n_attrs": n_attrs, "typo": typo.astype(np.int64), "anchor": anchor,
                         **{f"use_{name}": use[:, i] for i, name in enumerate(ATTRIBUTES)}})


def _typo(text: str, r: np.ndarray) -> str:
    """Drop, double or swap one letter of one longer word (r: three uniforms that pick which)."""
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long_words:
        return text
    i = long_words[int(r[0] * len(long_words))]
    w = words[i]
    j = 1 + int(r[1] * (len(w) - 2))
    variants = [w[:j] + w[j + 1:], w[:j] + w[j] + w[j:], w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]]
    words[i] = variants[int(r[2] * len(variants))]
    return " ".join(words)


def _judgments(rng: np.random.Generator, items: pd.DataFrame, q: pd.DataFrame,
               per_query: int) -> pd.DataFrame:
    """About per_query judged items per query: the anchor, near and far items, with latent and grade."""
    n, slots = len(q), per_query + 1
    anchor = q["anchor"].to_numpy()
    # Items sorted by type, brand, feature, ...: neighbours of the anchor share most of its attributes.
    order = np.lexsort([items[k].to_numpy() for k in reversed(("type", *POOLED, "size"))])
    pos = np.empty(len(items), dtype=np.int64)
    pos[order] = np.arange(len(items))
    dept_order = np.argsort(items["department"].to_numpy(), kind="stable")
    type_n, dept_n = np.bincount(items["type"]), np.bincount(items["department"])  # run lengths in the orders
    type_lo, dept_lo = np.cumsum(type_n) - type_n, np.cumsum(dept_n) - dept_n  # and where the runs start
    t, d = items["type"].to_numpy()[anchor, None], items["department"].to_numpy()[anchor, None]
    u = rng.random((n, slots))
    offset = rng.integers(-20, 21, (n, slots))
    near = np.clip(pos[anchor, None] + offset, type_lo[t], type_lo[t] + type_n[t] - 1)
    same_type = type_lo[t] + (u * type_n[t]).astype(np.int64)
    same_dept = dept_lo[d] + (u * dept_n[d]).astype(np.int64)
    source = rng.choice(len(SLOT_P), size=(n, slots), p=list(SLOT_P.values()))
    picked = np.choose(source, [order[near], order[same_type], dept_order[same_dept],
                                rng.integers(len(items), size=(n, slots))])
    picked[:, 0] = anchor
    count = np.clip(per_query + rng.integers(-1, 2, n), 1, slots)  # "about" per_query judgments
    keep = np.arange(slots)[None, :] < count[:, None]
    pairs = pd.DataFrame({"q": np.nonzero(keep)[0], "item": picked[keep]}).drop_duplicates(ignore_index=True)
    pairs["latent"] = _latent(items, q, pairs["q"].to_numpy(), pairs["item"].to_numpy())
    noise = rng.normal(0, RATER_NOISE, (len(pairs), RATERS))
    votes = np.rint(1 + 2 * pairs["latent"].to_numpy()[:, None] + noise)
    pairs["grade"] = np.round(np.clip(votes, 1, 3).mean(axis=1), 2)  # 1.0, 1.33, 1.67, ... like the real data
    return pairs


def _latent(items: pd.DataFrame, q: pd.DataFrame, qi: np.ndarray, it: np.ndarray) -> np.ndarray:
    """Relevance in [0, 1] of item it to query qi's intent: right type first, then its attributes."""
    anchor = q["anchor"].to_numpy()[qi]
    col = {k: items[k].to_numpy() for k in ("type", "department", *ATTRIBUTES)}
    same = {k: col[k][it] == col[k][anchor] for k in col}
    used = np.stack([q[f"use_{k}"].to_numpy()[qi] for k in ATTRIBUTES], axis=1)
    matched = np.stack([same[k] for k in ATTRIBUTES], axis=1) & used
    share = np.where(used.any(axis=1), matched.sum(axis=1) / np.maximum(used.sum(axis=1), 1), 1.0)
    latent = np.where(same["type"], 0.55 + 0.45 * share, 0.1 * same["department"] + 0.1 * matched.any(axis=1))
    is_model = q["kind"].to_numpy()[qi] == "model"
    near_miss = same["type"] * (0.3 + 0.15 * same["brand"]) + 0.05 * same["department"]
    return np.where(is_model, np.where(it == anchor, 1.0, near_miss), latent).astype(np.float32)
