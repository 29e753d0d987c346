"""The flat (CSR) label lists behind every label column."""

import numpy as np
import pyarrow as pa

from shards.lists import Lists, concat, dense_rows, from_dense
from shards.tables import from_arrow, to_arrow


def test_rows_nulls_and_take():
    lists = Lists.from_rows([[3, 1], None, [], [2]])
    assert len(lists) == 4
    assert lists.row(0).tolist() == [3, 1] and lists.row(2).tolist() == []
    assert [lists.is_valid(i) for i in range(4)] == [True, False, True, True]
    taken = lists.take(np.array([3, 0, 1]))
    assert [taken.row(i).tolist() for i in range(3)] == [[2], [3, 1], []]
    assert taken.valid.tolist() == [True, True, False]


def test_arrow_round_trip_keeps_nulls():
    lists = Lists.from_rows([[0, 4], None, [7]])
    arr = to_arrow(lists)
    assert arr.to_pylist() == [[0, 4], None, [7]]
    back = from_arrow(pa.chunked_array([arr.slice(0, 2), arr.slice(2)]))
    assert back.row(0).tolist() == [0, 4] and not back.is_valid(1) and back.row(2).tolist() == [7]


def test_dense_and_back():
    pos = Lists.from_rows([[1], [0, 2], []])
    neg = Lists.from_rows([None, [1], [3]])  # row 0: complete (all others negative)
    d = dense_rows(pos, neg, 4, 0, 3)
    assert d.tolist() == [[-1, 1, -1, -1], [1, -1, 1, 0], [0, 0, 0, -1]]
    assert dense_rows(pos, neg, 4, 1, 3).tolist() == d[1:].tolist()
    assert [from_dense(d, 1).row(i).tolist() for i in range(3)] == [[1], [0, 2], []]
    both = concat([from_dense(d[:1], -1), from_dense(d[1:], -1)])
    assert [both.row(i).tolist() for i in range(3)] == [[0, 2, 3], [1], [3]]
