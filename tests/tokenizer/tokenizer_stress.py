"""Shared test text for the tokenizer tests."""

# Every hard case we know of for byte-level BPE, in one string: CJK, emoji with
# zero-width joiners and skin tones, combining marks, right-to-left scripts, \r\n,
# whitespace runs (spaces, tabs, NBSP, ideographic space), contractions in both
# cases, digits, a special token spelled inside ordinary text, control chars.
STRESS_TEXT = (
    "Hello, world! I'm here; you're there; we'll see; they've gone; she'd know; it's OK. "
    "DON'T SHOUT, I'LL go.\r\n\r\nLine after CRLF\n\n\n   indented\t\ttabs   \n"
    "日本語のテキストと中文文本，还有한국어 텍스트。\n"
    "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, ❤️ heart, 🇫🇷 flag\n"
    "e\u0301 (e + combining acute) vs é; Z\u0336\u0334\u0335algo; n\u0303\n"
    "שלום עולם, مرحبا بالعالم, \u202eRTL override\u202c\n"
    "numbers 1234567890 3.14159 -42 1e10 0x1F\n"
    "nbsp\u00a0here, ideographic\u3000space, zero\u200bwidth\n"
    "special inside text: <|endoftext|> and <|endoftext|>again<|endoftext|>\n"
    "control \x00\x01\x7f chars, trailing spaces   \n   "
)
