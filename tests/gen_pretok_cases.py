#!/usr/bin/env python3
"""Reference pre-tokenizer splits for tok_test.c, made with the third-party `regex` module
(the regexes below are the ones in the GPT-2, Llama-3 and Qwen2 tokenizer.json files).

Output lines: mode <TAB> input as hex <TAB> comma-separated byte lengths of the pieces.
Usage: python3 gen_pretok_cases.py > pretok_cases.txt
"""
import random
import regex

PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}

FIXED = [
    "", " ", "  ", "\t", "\n", "\n\n", " \n", "a", " a", "  a", "\ta", "\n a",
    "Hello world", " Hello  World!!\n\n", "I'm don't we'LL THEY'RE 'S 'x '", "it's 'll've",
    "1234567 12 1 ١٢٣٤ ½ Ⅻ", "a1b22c333d4444", "  12  ", "foo\r\n\r\nbar \r\n  baz",
    "!!!\n\n\n?  ", "...\r\r\nx", "Führer naïve café", "e\u0301 combining", "🦙🦙 llama 🚀!",
    "你好，世界。 こんにちは", "Привет мир", "\u00a0\u3000x\u2003y", "tab\t\tend\t",
    "trailing   ", "  leading", "x  \n  y", "$100.00 (approx.) #tag @user", "a\u2028b",
    "' 's '' ''s", "\"quoted\" 'single'", "\r", " \r\n ", "\u0085x",
]

ALPHABET = list("aZ09 '\t\n\r.!,;-_sStTdD") + ["é", "ß", "ñ", "Ж", "中", "٣", "½", "\u00a0",
                                               "\u3000", "\u2003", "🙂", "\u0301", "ll", "re", "ve"]


def main():
    rnd = random.Random(1234)
    cases = list(FIXED)
    for _ in range(300):
        cases.append("".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 24))))
    for mode, pat in PATTERNS.items():
        rx = regex.compile(pat)
        for s in cases:
            pieces = rx.findall(s)
            assert "".join(pieces) == s, (mode, s)
            lens = ",".join(str(len(p.encode())) for p in pieces)
            print("%s\t%s\t%s" % (mode, s.encode().hex(), lens))


if __name__ == "__main__":
    main()
