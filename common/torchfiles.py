"""Reading torch files and loading state dicts, each failure one line naming the file.

Shared by the ImageNet weights (common.models) and the run folder's checkpoints
(common.checkpoints). Files are read with weights_only=True: tensors and plain containers
only, so a file cannot run code.
"""
from __future__ import annotations

import pickle
import re

import torch

from common.errors import UserError, first_line


def load(path: str, what: str) -> dict:
    """A torch file holding a dict; any failure is a UserError naming `path`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no {what} at {path}") from None
    except pickle.UnpicklingError as e:  # weights_only refused a global: the file would run code
        if "Weights only load failed" in str(e):
            named = re.search(r"GLOBAL (\S+)", str(e))
            refused = f"a call to {named.group(1)}" if named else "code"
            raise UserError(f"refused {what} {path} as unsafe: it holds {refused}, which loading would run; "
                            f"this repo only loads tensors and plain containers (do not load it some other way "
                            f"unless you made it yourself)") from None
        raise UserError(f"cannot load {what} {path}: {first_line(e)} (empty, truncated or not a torch "
                        f"file)") from None
    except Exception as e:  # truncated, empty, not a torch file
        raise UserError(f"cannot load {what} {path}: {first_line(e)} (empty, truncated or not a torch "
                        f"file)") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a {what} (a {type(state).__name__}, not a dict)")
    return state


def load_state(target, state, source: str, what: str, fits: str = "this run") -> None:
    """target.load_state_dict(state), strict; a mismatch is one line naming `source` and the first
    offending key. `fits`: what the state should fit, for the message ('EfficientNetV2-S')."""
    if isinstance(target, torch.nn.Module):
        problem = _module_mismatch(target, state)
        if problem:
            raise UserError(f"{source}: its {what} does not fit {fits} ({problem})")
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        raise UserError(f"{source}: its {what} does not fit {fits} ({detail[:240]})") from None


def _module_mismatch(module: torch.nn.Module, state) -> str | None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "not a state dict of tensors"
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or wrong):
        return None
    example = (wrong[:1] or [f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"])[0]
    return (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shaped keys; "
            f"e.g. {example}")
