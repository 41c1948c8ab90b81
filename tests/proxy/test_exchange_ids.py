"""Request ids: shape, order, uniqueness, and no shared randomness across a fork."""

from __future__ import annotations

import os
import re

from proxy.exchange import _RandomHex, new_id

ID = re.compile(r"gw_[0-9a-f]{32}")


def test_ids_have_their_shape_are_time_ordered_and_unique_across_refills() -> None:
    ids = [new_id() for _ in range(3 * _RandomHex.READ + 5)]  # crosses three reads of random bytes
    assert all(ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert [i[3:15] for i in ids] == sorted(i[3:15] for i in ids)  # the millisecond prefix never goes back
    assert len({i[15:] for i in ids}) == len(ids)  # the random part alone is unique too


def test_a_forked_child_does_not_reuse_the_parents_random_digits() -> None:
    new_id()  # the parent holds a read with digits left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_id()[15:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_id()[15:] for _ in range(50)}
    assert len(child) == 50 and not child & parent
