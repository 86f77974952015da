"""Ids (common/ids.py): the prefix, 24 characters of the 62-letter alphabet, each letter equally likely."""

from __future__ import annotations

import collections
import string

from common.ids import new_id


def test_an_id_is_the_prefix_and_24_alphanumeric_characters_and_ten_thousand_never_repeat() -> None:
    ids = [new_id("ftjob") for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for one in ids[:100]:
        prefix, _, body = one.partition("-")
        assert prefix == "ftjob" and len(body) == 24
        assert set(body) <= set(string.ascii_letters + string.digits)


def test_every_character_of_the_alphabet_is_equally_likely() -> None:
    # 240,000 characters: 3,871 expected per letter, standard deviation ~62. Mapping a byte onto 62 letters
    # without rejecting 248-255 makes 8 letters 25% likelier (~4,800): far outside this band.
    counts = collections.Counter("".join(new_id("x")[2:] for _ in range(10_000)))
    expected = 240_000 / 62
    assert len(counts) == 62
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), counts.most_common(10)
