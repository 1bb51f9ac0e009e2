"""tuning.at_edge: which selected values lie at the edge of their search space."""
from cl_peft_lib.tuning import at_edge, grid_space


def _sel(space, chosen):
    return {"trials": [{"options": c} for c in space], "selected": chosen}


def test_edges_are_found_and_inner_values_are_not():
    space = grid_space(lr=[0.03, 0.01, 0.003], prompt_length=[5, 10])
    assert at_edge(_sel(space, {"lr": 0.01, "prompt_length": 5})) == {"prompt_length": "lowest"}
    assert at_edge(_sel(space, {"lr": 0.03, "prompt_length": 10})) == {"lr": "highest", "prompt_length": "highest"}
    assert at_edge(_sel(space, {"lr": 0.003, "prompt_length": 10})) == {"lr": "lowest", "prompt_length": "highest"}


def test_non_numeric_and_single_valued_axes_are_not_judged():
    space = grid_space(lora_lr=[0.003, 0.001], layers=[None, (0, 1), (0,)], rank=[1])
    assert at_edge(_sel(space, {"lora_lr": 0.003, "layers": (0,), "rank": 1})) == {"lora_lr": "highest"}
    assert at_edge(_sel(space, {"lora_lr": 0.001, "layers": None, "rank": 1})) == {"lora_lr": "lowest"}


def test_a_stored_selection_with_json_lists_is_read():
    space = [{"lora_lr": 0.003, "layers": None}, {"lora_lr": 0.001, "layers": [0]}]
    assert at_edge(_sel(space, {"lora_lr": 0.001, "layers": [0]})) == {"lora_lr": "lowest"}
