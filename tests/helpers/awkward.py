"""Texts that trip up tokenizers and offset arithmetic: accents, CJK and kana, emoji (a skin tone, a ZWJ family),
tabs and newlines, leading and double spaces, an empty text, a 3000-character word, capitals."""

AWKWARD_TEXTS = [
    "Café près d'ici: crème brûlée à Zürich, señor",
    "北京烤鸭 near 東京 and ラーメン tonight",
    "🍕 pizza 🍣 sushi 👍🏽 and 👨‍👩‍👧 friendly",
    "cheap\tthai\tfood\nopen late\r\nnear me",
    "   leading spaces and  double  spaces  ",
    "",
    "cheap " + "sushiramen" * 300 + " thai food near me",  # a 3000-character word between ordinary ones
    "Is THERE a Cheap Thai place near Olive Garden?",
]
