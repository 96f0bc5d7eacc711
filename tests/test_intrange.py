import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwq.intrange import check_bits, max_int, min_int, signed_width, weight_range


@pytest.mark.parametrize("bits", range(1, 9))
def test_ranges_are_two_complement(bits):
    assert max_int(bits, False) - min_int(bits, False) + 1 == 2**bits
    assert max_int(bits, True) - min_int(bits, True) + 1 == 2**bits
    assert signed_width(min_int(bits, True), max_int(bits, True)) == bits


def test_binary_weights_have_no_zero():
    assert weight_range(1) == (-1, 1)


@pytest.mark.parametrize("bad", [0, 9, -1])
def test_check_bits_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"bits must be an integer in 1..8, not"):
        check_bits(bad)


def test_check_bits_rejects_wrong_kind():
    with pytest.raises(TypeError, match=r"w_bits must be an integer in 1..8, not '2'"):
        check_bits("2", name="w_bits")


@given(st.integers(-(2**40), 2**40), st.integers(0, 2**40))
def test_signed_width_is_minimal(lo, span):
    hi = lo + span
    bits = signed_width(lo, hi)
    assert min_int(bits, True) <= lo and hi <= max_int(bits, True)
    if bits > 1:
        assert not (min_int(bits - 1, True) <= lo and hi <= max_int(bits - 1, True))
