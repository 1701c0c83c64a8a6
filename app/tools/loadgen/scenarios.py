"""genai-bench traffic scenarios and synthetic prompts.

Why: studies describe load the way genai-bench does (``D(100,100)``, ``N(480,240)/(300,150)``,
``U(50,100)/(100,200)``), so results are comparable with that tool. Token counts are
*requested* lengths; no tokenizer is loaded (the autotuner must not download one).

Prompt-length approximation (shared with the simulated engine): one token ~= 4 characters,
i.e. an engine-side count of ``ceil(len(text) / 4)``. ``make_prompt(n)`` builds exactly
``4 * n - 1`` characters from random common 3-letter English words separated by spaces;
each " word" is a single token in Llama-3/GPT-style BPE vocabularies, so real engines see
roughly ``n`` tokens too (plus BOS / chat template). The words are random per request so
that prefix caching cannot turn the benchmark into a cache-hit test.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_PAIR = rf"\({_NUM},{_NUM}\)"
_PATTERNS = {
    "D": re.compile(rf"^D{_PAIR}$"),
    "N": re.compile(rf"^N{_PAIR}/{_PAIR}$"),
    "U": re.compile(rf"^U{_PAIR}/{_PAIR}$"),
}
PROMPT_WORDS = (
    "the and for you not are but all any can had her was one our out day get has him his how "
    "man new now old see two way who boy did its let put say she too use end far few may run "
    "set top yet act add age ago air arm art ask bad bag bed big bit box bus buy car cut dog "
    "eat eye fit fly fun gas god gun guy hat hot job key kid law lay leg lie lot low map mix "
    "net nor odd off oil own pay per pen pop raw red row sea sit six sky son sun tax tea ten "
    "tie tip toe war wet win yes"
).split()


@dataclass(frozen=True)
class Scenario:
    """A parsed traffic scenario: ``kind`` is D, N or U; ``params`` its four numbers.

    D: (in, out, in, out) - fixed lengths. N: (mean_in, sd_in, mean_out, sd_out), rounded
    and clipped to >= 1. U: (min_in, max_in, min_out, max_out), inclusive integers.
    """

    kind: str
    params: tuple[float, float, float, float]
    text: str

    def sample(self, rng: random.Random) -> tuple[int, int]:
        """(input_tokens, output_tokens) for one request."""
        a, b, c, d = self.params
        if self.kind == "D":
            return int(a), int(b)
        if self.kind == "N":
            return max(1, round(rng.gauss(a, b))), max(1, round(rng.gauss(c, d)))
        return rng.randint(int(a), int(b)), rng.randint(int(c), int(d))

    def __str__(self) -> str:
        return self.text


def parse_scenario(s: str) -> Scenario:
    """Parse a genai-bench scenario string; raises ValueError saying what is wrong."""
    if not isinstance(s, str):
        raise ValueError(f"scenario must be a string, got {type(s).__name__}")
    text = s.strip()
    kind = text[:1].upper()
    pattern = _PATTERNS.get(kind)
    if pattern is None:
        raise ValueError(
            f"unsupported scenario {s!r}: expected D(in,out), N(mean_in,sd_in)/(mean_out,sd_out) "
            "or U(min_in,max_in)/(min_out,max_out)"
        )
    m = pattern.match(kind + text[1:])
    if m is None:
        forms = {"D": "D(in,out)", "N": "N(mean_in,sd_in)/(mean_out,sd_out)",
                 "U": "U(min_in,max_in)/(min_out,max_out)"}
        raise ValueError(f"malformed scenario {s!r}: expected {forms[kind]}")
    nums = [float(g) for g in m.groups()]
    if kind == "D":
        a, b = nums
        _require_int_ge1(s, a, b)
        return Scenario("D", (a, b, a, b), f"D({int(a)},{int(b)})")
    a, b, c, d = nums
    if kind == "N":
        if a < 1 or c < 1:
            raise ValueError(f"scenario {s!r}: means must be >= 1")
        if b < 0 or d < 0:
            raise ValueError(f"scenario {s!r}: standard deviations must be >= 0")
        return Scenario("N", (a, b, c, d), f"N({_fmt(a)},{_fmt(b)})/({_fmt(c)},{_fmt(d)})")
    _require_int_ge1(s, a, b, c, d)
    if a > b or c > d:
        raise ValueError(f"scenario {s!r}: minimum must not exceed maximum")
    return Scenario("U", (a, b, c, d), f"U({int(a)},{int(b)})/({int(c)},{int(d)})")


def _require_int_ge1(s: str, *values: float) -> None:
    for v in values:
        if v != int(v) or v < 1:
            raise ValueError(f"scenario {s!r}: token counts must be integers >= 1, got {_fmt(v)}")


def _fmt(v: float) -> str:
    return str(int(v)) if v == int(v) else str(v)


def make_prompt(n_tokens: int, rng: random.Random) -> str:
    """A prompt of ``n_tokens`` approximate tokens (see module docstring): 4*n-1 characters."""
    if n_tokens < 1:
        raise ValueError("n_tokens must be >= 1")
    return " ".join(rng.choice(PROMPT_WORDS) for _ in range(n_tokens))
