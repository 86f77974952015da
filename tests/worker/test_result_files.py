"""The CSV of a job's step metrics (worker/result_files.py), from points shaped as the metrics series returns them."""

from __future__ import annotations

import csv
import io
from typing import Any

from worker.result_files import COLUMNS, metrics_csv


def test_the_metrics_csv_has_openais_columns_one_row_per_point_in_order_and_empty_cells_for_what_was_not_measured(
        ) -> None:
    points: list[dict[str, Any]] = [{"step": 1, "loss": 2.5, "valid_loss": None, "learning_rate": 1e-4},
              {"step": 2, "loss": 0.125, "valid_loss": 0.75, "valid_mean_token_accuracy": 0.5,
               "train_mean_token_accuracy": 0.25}]
    rows = list(csv.reader(io.StringIO(metrics_csv(points).decode())))
    assert tuple(rows[0]) == COLUMNS == ("step", "train_loss", "train_accuracy", "valid_loss",
                                         "valid_mean_token_accuracy")
    assert rows[1:] == [["1", "2.5", "", "", ""], ["2", "0.125", "0.25", "0.75", "0.5"]]


def test_a_loss_keeps_every_digit_in_the_csv() -> None:
    loss = 0.1 + 0.2  # 0.30000000000000004: a rounded cell would not read back as the same float
    rows = list(csv.reader(io.StringIO(metrics_csv([{"step": 7, "loss": loss}]).decode())))
    assert float(rows[1][1]) == loss
