"""Raw REST calls that send fewer fields than an endpoint has.

gradio_client fills an endpoint's missing parameters with their defaults, but a raw call
(`POST /gradio_api/call/caption` with `{"data": [image]}`) is refused by gradio with a
message that lists its components as Python objects (`<gradio.components.file.File
object at 0x...>`). Here a short call to an endpoint named in `complete` gets the
documented defaults (each component's initial value, the same the page starts with); a
short call to any other endpoint gets one line naming the fields it lacks.
"""

from __future__ import annotations

import gradio as gr


def _label(block) -> str:
    return getattr(block, "label", None) or type(block).__name__.lower()


def complete_short_calls(demo: gr.Blocks, complete: tuple[str, ...] = ("caption",)) -> None:
    """Wrap `demo.validate_inputs` (gradio's check that a call sent every input) so that a
    short call is completed or refused in one line (module docstring)."""
    check = demo.validate_inputs

    def validate(block_fn, inputs: list) -> None:
        fields = [b for b in block_fn.inputs if not b.skip_api]  # what a client sends
        if len(inputs) < len(block_fn.inputs) and len(inputs) <= len(fields):
            if block_fn.api_name not in complete or not inputs:
                missing = ", ".join(_label(b) for b in fields[len(inputs):])
                raise gr.Error(f"/{block_fn.api_name} needs {len(fields)} fields "
                               f"({', '.join(_label(b) for b in fields)}); this call sent "
                               f"{len(inputs)}, missing {missing}", print_exception=False)
            given = iter([*inputs, *(b.value for b in fields[len(inputs):])])
            inputs[:] = [None if b.skip_api else next(given) for b in block_fn.inputs]
        check(block_fn, inputs)

    demo.validate_inputs = validate
