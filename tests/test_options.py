"""``config.options.read_options``: key case, optional fields with defaults, read order, errors."""

import re

import pytest

from vissl_models.config import ConfigError
from vissl_models.config import options as opt


def test_upper_case_keys_by_default():
    section = {"DEPTH": 3, "USE_SE": True}
    out = opt.read_options(section, "M.T.", [("depth", opt.positive_int), ("use_se", opt.as_bool)])
    assert out == {"depth": 3, "use_se": True}
    with pytest.raises(ConfigError, match=re.escape("M.T.DEPTH: got 0, expected an integer >= 1")):
        opt.read_options({"DEPTH": 0}, "M.T.", [("depth", opt.positive_int)])


def test_as_is_keys_are_read_and_named_as_written():
    out = opt.read_options({"depth": 4.0}, "M.R.", [("depth", opt.positive_int)], key_case="as_is")
    assert out == {"depth": 4} and isinstance(out["depth"], int)
    with pytest.raises(ConfigError, match=re.escape("M.R.depth: got 'x', expected an integer")):
        opt.read_options({"depth": "x"}, "M.R.", [("depth", opt.positive_int)], key_case="as_is")
    # an upper-case key is not the lower-case option
    with pytest.raises(KeyError, match="depth"):
        opt.read_options({"DEPTH": 4}, "M.R.", [("depth", opt.positive_int)], key_case="as_is")


def test_absent_optional_field_gives_its_default_unparsed():
    fields = [("width", opt.positive_int, None), ("rate", opt.probability, 0.5), ("kind", opt.choice_of(["a"]), "a")]
    assert opt.read_options({}, "S.", fields, key_case="as_is") == {"width": None, "rate": 0.5, "kind": "a"}
    assert opt.read_options({"width": 8, "rate": 1}, "S.", fields, key_case="as_is") == {
        "width": 8, "rate": 1.0, "kind": "a"
    }


def test_present_optional_field_is_always_parsed():
    fields = [("width", opt.positive_int, 8)]
    for bad, shown in ((None, "None"), (0, "0"), ("8", "'8'")):
        with pytest.raises(ConfigError, match=re.escape(f"S.WIDTH: got {shown}")):
            opt.read_options({"WIDTH": bad}, "S.", fields)


def test_missing_required_field_raises_the_sections_error():
    with pytest.raises(KeyError, match="WIDTH"):
        opt.read_options({}, "S.", [("width", opt.positive_int)])


def test_first_bad_value_in_field_order_is_reported():
    section = {"a": "x", "b": "y"}
    fields = [("b", opt.as_bool), ("a", opt.as_int)]
    with pytest.raises(ConfigError, match=r"^S\.b: "):
        opt.read_options(section, "S.", fields, key_case="as_is")
    assert section == {"a": "x", "b": "y"}


def test_bare_names_take_their_parser_from_parsers():
    out = opt.read_options({"N": 2, "P": 0.1}, "", ["n", ("p", opt.probability, 0.0)], parsers={"n": opt.positive_int})
    assert out == {"n": 2, "p": 0.1}


def test_unknown_key_case_is_refused():
    with pytest.raises(ValueError, match=r"key_case: got 'lower', expected one of \['upper', 'as_is'\]"):
        opt.read_options({"n": 1}, "", [("n", opt.as_int)], key_case="lower")
