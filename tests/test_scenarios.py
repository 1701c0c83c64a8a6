"""genai-bench scenario strings: what parses, what is refused, and what sampling yields."""
import math
import random

import pytest

from app.tools.loadgen.scenarios import Scenario, make_prompt, parse_scenario

pytestmark = pytest.mark.unit


def test_deterministic() -> None:
    sc = parse_scenario("D(100,20)")
    assert isinstance(sc, Scenario) and sc.kind == "D"
    assert sc.sample(random.Random(1)) == (100, 20)
    assert str(sc) == "D(100,20)"


@pytest.mark.parametrize("text", [" D( 100 , 20 ) ", "d(100,20)"])
def test_whitespace_and_case(text: str) -> None:
    assert parse_scenario(text).sample(random.Random(0)) == (100, 20)


def test_normal_is_clipped_to_one_and_centred() -> None:
    sc = parse_scenario("N(480,240)/(300,150)")
    rng = random.Random(0)
    samples = [sc.sample(rng) for _ in range(4000)]
    assert all(i >= 1 and o >= 1 for i, o in samples)
    assert abs(sum(i for i, _ in samples) / len(samples) - 480) < 20
    tiny = parse_scenario("N(1,50)/(1,50)")
    assert all(min(tiny.sample(rng)) >= 1 for _ in range(500))


def test_normal_zero_sd_is_fixed() -> None:
    assert parse_scenario("N(10,0)/(5,0)").sample(random.Random(3)) == (10, 5)


def test_uniform_inclusive_bounds() -> None:
    sc = parse_scenario("U(50,52)/(7,7)")
    rng = random.Random(0)
    seen = {sc.sample(rng) for _ in range(300)}
    assert {i for i, _ in seen} == {50, 51, 52}
    assert {o for _, o in seen} == {7}


@pytest.mark.parametrize("bad", [
    "", "X(1,2)", "D(100)", "D(100,20)/(1,2)", "D(0,10)", "D(10.5,3)", "D(-1,3)",
    "N(100,10)", "N(100,-1)/(10,1)", "N(0,1)/(10,1)", "U(10,5)/(1,2)", "U(1,2)/(3)",
    "U(0,5)/(1,2)", "D(a,b)", "E(1024)", "I(512,512)",
])
def test_bad_strings_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_scenario(bad)


def test_bad_type_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_scenario(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000])
def test_prompt_length_matches_sim_approximation(n: int) -> None:
    text = make_prompt(n, random.Random(n))
    assert math.ceil(len(text) / 4) == n
    assert len(text.split()) == n


def test_prompts_differ_between_requests() -> None:
    rng = random.Random(0)
    assert make_prompt(50, rng) != make_prompt(50, rng)
    with pytest.raises(ValueError):
        make_prompt(0, rng)
