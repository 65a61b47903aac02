"""`--set KNOB=VALUE` (one implementation for infer, eval, compare and serve) and the "did you mean"
hint a mistyped name gets."""

from __future__ import annotations

import pytest

from guikv.errors import UserInputError, did_you_mean
from guikv_cli.knobs import config_with_knobs, knob_settings


def test_did_you_mean_names_the_closest_known_name_only_when_close() -> None:
    assert did_you_mean("bugdet", ["budget", "limit"]) == " (did you mean 'budget'?)"
    assert (
        did_you_mean("st_lite_varient", ["st_lite_variant", "subspace"])
        == " (did you mean 'st_lite_variant'?)"
    )
    assert did_you_mean("colour", ["budget", "limit"]) == ""


def test_knobs_are_typed_like_their_fields() -> None:
    knobs = knob_settings(["star_kv_temporal=no", "rank=16", "star_kv_prior_lambda=0.3", "subspace=svd"])
    assert knobs == {"star_kv_temporal": False, "rank": 16, "star_kv_prior_lambda": 0.3, "subspace": "svd"}
    config = config_with_knobs(knobs, method="star_kv", budget=5.0)
    assert (config.rank, config.star_kv_temporal, config.budget) == (16, False, 5.0)


@pytest.mark.parametrize(
    ("pairs", "own_flags", "message"),
    [
        (["subspce=svd"], None, "--set subspce is unknown (did you mean 'subspace'?)"),
        (["budget=5"], None, "--set budget is unknown (use --budget)"),
        (["budget=5"], {"budget": "--budgets"}, "--set budget is unknown (use --budgets)"),
        (["rank"], None, "--set 'rank' is malformed"),
    ],
)
def test_knob_mistakes_are_one_line(pairs: list[str], own_flags: dict[str, str] | None, message: str) -> None:
    with pytest.raises(UserInputError) as raised:
        knob_settings(pairs, own_flags)
    assert message in str(raised.value)


def test_a_knob_value_the_config_refuses_names_set() -> None:
    with pytest.raises(UserInputError, match=r"--set subspace='lu' is invalid"):
        config_with_knobs(knob_settings(["subspace=lu"]), method="gui_kv")


def test_a_mistyped_method_or_choice_gets_the_closest_name() -> None:
    with pytest.raises(
        UserInputError,
        match=r"--method 'gui-kv' is invalid: expected one of .*random \(did you mean 'gui_kv'\?\)",
    ):
        config_with_knobs({}, method="gui-kv")
    with pytest.raises(
        UserInputError, match=r"--set subspace='svdd' is invalid: .* \(did you mean 'svd'\?\)"
    ):
        config_with_knobs(knob_settings(["subspace=svdd"]), method="gui_kv")
