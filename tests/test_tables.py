"""The one table writer: markdown and aligned text, written exactly as the checked-in tables have them."""

from lowrank_lm.tables import markdown_table, text_table


def test_markdown_table_rows_rule_and_blank_cells():
    text = markdown_table(["a", "bb"], [["1", "2"], ["", None]])
    assert text == "| a | bb |\n|---|---|\n| 1 | 2 |\n|  | |"


def test_markdown_table_without_rows_is_header_and_rule():
    assert markdown_table(["x", "y", "z"], []) == "| x | y | z |\n|---|---|---|"


def test_text_table_pads_to_the_widest_cell_and_trims_line_ends():
    text = text_table(["name", "n"], [["a", "100"], ["longer", ""]])
    assert text.splitlines() == ["name    n", "a       100", "longer"]
    assert text_table(["h1", "h2"], []) == "h1  h2"


def test_text_table_indents_every_line_and_still_trims():
    text = text_table(["run", "loss"], [["a", ""], ["bb", "5.0"]], indent="  ")
    assert text.splitlines() == ["  run  loss", "  a", "  bb   5.0"]
