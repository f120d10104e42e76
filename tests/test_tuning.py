"""The benchmark's tuning grid and selection rule (erase/cli/tuning.py)."""

import pytest

from erase.methods import METHODS
from erase.cli.main import build_parser
from erase.cli.tuning import BUDGET, GRIDS, grid, select, star


def test_grid_spells_every_combination_as_flags_in_order():
    assert grid(lr=[1, 2], steps=[3]) == [["--lr", 1, "--steps", 3], ["--lr", 2, "--steps", 3]]
    assert len(grid(a=[1, 2], b=[3, 4], c_d=[5, 6])) == 8 and grid(c_d=[5])[0][0] == "--c-d"


def test_star_changes_one_flag_at_a_time_from_the_center():
    assert star({"lr": 1, "w": 2}, {"steps": 9}, lr=[3], w=[4, 5]) == [
        ["--lr", 1, "--w", 2, "--steps", 9], ["--lr", 3, "--w", 2, "--steps", 9],
        ["--lr", 1, "--w", 4, "--steps", 9], ["--lr", 1, "--w", 5, "--steps", 9]]
    assert star({"lr": 1}) == [["--lr", 1]]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_has_a_grid_within_the_budget_that_erase_unlearn_accepts(method):
    configurations = GRIDS[method]
    assert 1 <= len(configurations) <= BUDGET
    assert len({tuple(map(str, flags)) for flags in configurations}) == len(configurations)  # no repeats
    for flags in configurations:
        argv = ["unlearn", "--model", "m", "--forget-class", "5", "--out", "o", "--method", method, *map(str, flags)]
        args = build_parser(argv).parse_args(argv)
        for name, value in zip(flags[::2], flags[1::2]):  # each flag reaches the option it names, with its value
            assert getattr(args, name[2:].replace("-", "_")) == value, name


def test_selection_takes_the_best_ra_among_the_erasing_configurations():
    sweep = [
        {"name": "keeps all, erases nothing", "fa": 0.90, "ra": 0.98},
        {"name": "erases, hurts", "fa": 0.00, "ra": 0.80},
        {"name": "erases, keeps", "fa": 0.04, "ra": 0.95},
        {"name": "at the bound", "fa": 0.05, "ra": 0.95},  # tie on RA: the earlier row wins
        {"name": "almost erases", "fa": 0.06, "ra": 0.99},
    ]
    assert select(sweep)["name"] == "erases, keeps"
    assert select(sweep, fa_max=0.0)["name"] == "erases, hurts"


def test_selection_falls_back_to_the_lowest_fa_when_nothing_erases():
    sweep = [{"name": "a", "fa": 0.5, "ra": 0.99}, {"name": "b", "fa": 0.2, "ra": 0.5}, {"name": "c", "fa": 0.3, "ra": 0.9}]
    assert select(sweep)["name"] == "b"
    with pytest.raises(ValueError, match="no configurations"):
        select([])
