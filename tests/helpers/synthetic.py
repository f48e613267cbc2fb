"""Templated restaurant-review sentences with the tutorial's 8 labels, for tests that must train a model.

Lowercase, whitespace-separated words as in the MIT corpus; the same (n, seed) always gives the same sentences.
"""
from __future__ import annotations

import random

from backend.data.spans import Example, tokens_to_text

LABELS = ("Amenity", "Cuisine", "Dish", "Hours", "Location", "Price", "Rating", "Restaurant_Name")

VOCABULARY: dict[str, list[str]] = {
    "Amenity": ["outdoor seating", "valet parking", "live music", "wifi", "kid friendly", "patio",
                "a full bar", "dog friendly", "private rooms", "late night delivery"],
    "Cuisine": ["thai", "italian", "mexican", "sushi", "indian", "greek", "korean barbecue", "vegan",
                "french", "ethiopian", "middle eastern", "cajun"],
    "Dish": ["pad thai", "lasagna", "burritos", "ramen", "chicken tikka masala", "pho", "cheesecake",
             "fish tacos", "dumplings", "clam chowder", "waffles", "gyros"],
    "Hours": ["open now", "open late", "after midnight", "on sunday morning", "24 hours",
              "before 6 am", "tonight", "for breakfast", "at noon", "this weekend"],
    "Location": ["near me", "downtown", "in boston", "around here", "on main street",
                 "within 5 miles", "close to the airport", "in chinatown", "nearby", "uptown"],
    "Price": ["cheap", "inexpensive", "expensive", "affordable", "moderately priced", "under 20 dollars",
              "high end", "budget"],
    "Rating": ["good", "highly rated", "5 star", "the best", "top rated", "great reviews", "well reviewed",
               "decent"],
    "Restaurant_Name": ["olive garden", "mcdonalds", "chez panisse", "the golden dragon", "blue moon diner",
                        "taco bell", "joes pizza", "the rusty anchor", "panera bread", "sakura house"],
}

# A template is a list of literal words and {Label} slots.
TEMPLATES = [
    "is there a {Price} {Cuisine} restaurant {Location}",
    "find me a {Rating} place that serves {Dish} {Location}",
    "i want {Cuisine} food {Hours}",
    "does {Restaurant_Name} have {Amenity}",
    "where can i get {Dish} {Hours}",
    "show me {Rating} {Cuisine} places with {Amenity}",
    "is {Restaurant_Name} {Price}",
    "any {Price} places {Location} that are {Hours}",
    "which {Cuisine} restaurant has the {Rating} {Dish}",
    "book a table at {Restaurant_Name} {Hours}",
    "looking for {Dish} with {Amenity} {Location}",
    "how far is {Restaurant_Name} from here",
    "what time does {Restaurant_Name} close",
    "i need a {Rating} restaurant with {Amenity}",
    "recommend some {Cuisine} food that is {Price}",
]


def _sentence(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for part in template.split():
        if part.startswith("{") and part.endswith("}"):
            label = part[1:-1]
            words = rng.choice(VOCABULARY[label]).split()
            tokens.extend(words)
            tags.extend([f"B-{label}"] + [f"I-{label}"] * (len(words) - 1))
        else:
            tokens.append(part)
            tags.append("O")
    return tokens, tags


def restaurant_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` templated sentences as word-level examples (text rebuilt with single spaces)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        tokens, tags = _sentence(rng.choice(TEMPLATES), rng)
        text, words = tokens_to_text(tokens)
        examples.append(Example(text, words, tags, source=f"synthetic {seed}:{i}"))
    return examples


def bio_labels() -> list[str]:
    """``O`` then ``B-x``, ``I-x`` for each of the 8 labels, in the tutorial's order."""
    return ["O"] + [f"{prefix}-{label}" for label in LABELS for prefix in ("B", "I")]


def write_bio(examples: list[Example], path) -> None:
    """Write examples as an MIT-style BIO file (``TAG<TAB>token``, blank line between sentences)."""
    blocks = ["\n".join(f"{tag}\t{token}" for token, tag in zip(e.tokens, e.tags)) for e in examples]
    path.write_text("\n\n".join(blocks) + "\n")
