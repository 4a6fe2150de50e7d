"""The app's Gradio components and its error wrapper: each component changes one method of Gradio's (the upload
handed over undecoded, a threshold out of range answered with a message, a Label whose label is the decision), and
`user_errors` turns every failure of a handler into a short message on screen, never a stack trace.

Torch-free, like the rest of what the app needs to serve its first predictions (see app.py).
"""

from __future__ import annotations

import functools
import logging
from abc import ABCMeta
from collections.abc import Callable

import gradio as gr

from .image_utils import ImageLoadError
from .presentation import threshold_problem
from .serving import ServingError

logger = logging.getLogger(__name__)

# The components below change one method of Gradio's. They are classes, not instance overrides, because a gr.update(...)
# or gr.skip() returned for a component makes Gradio rebuild it for the session from its class and constructor
# arguments; `is_template`: the browser and the API see the plain component.


class _WithoutStub(type(gr.Slider)):
    """Gradio's component metaclass writes a .pyi stub next to the file that defines a component subclass; a subclass
    that adds no events and no `__init__` needs nothing else that the metaclass does."""

    def __new__(mcls, name, bases, attrs):
        return ABCMeta.__new__(mcls, name, bases, attrs)


class RawUploadImage(gr.Image, metaclass=_WithoutStub):
    """Hands the handler the uploaded file's path undecoded: gr.Image's own decoding would fail on a bad file before
    the handler runs, with no useful message, while `modeling.image_utils.load_image` says what is wrong."""

    is_template = True

    def preprocess(self, payload):
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return super().preprocess(payload)
        return str(payload.path)  # Gradio has already checked that the path is an upload in its cache


class BoundedSlider(gr.Slider, metaclass=_WithoutStub):
    """A threshold slider whose out-of-range value given to an analysis (the API, or Analyse clicked before the box was
    left) fails with a message that names the setting and what was typed, without a server traceback (Gradio's own
    check says "Value 1.5 is greater than maximum value 1.0." and logs a stack trace for a typo), also after a model
    switch has relabelled the slider. The sliders' `.change` events take the raw value instead (`preprocess=False`)
    and put the slider back: see `on_threshold_moved`."""

    is_template = True

    def preprocess(self, payload):
        problem = threshold_problem(payload, self.minimum, self.maximum) if payload is not None else None
        if problem:
            raise gr.Error(f"{problem}.", title="Threshold out of range", print_exception=False)
        return super().preprocess(payload)


class DecisionLabel(gr.Label, metaclass=_WithoutStub):
    """Lets the handler return `(label, {class: probability})`, so that the Label's `label` (what the API returns)
    is the thresholded decision rather than the most probable class, and its bar comes first (as the pipeline puts the
    decided class first): a decision below p = 0.5 would otherwise sit under the other class's longer bar."""

    is_template = True

    def postprocess(self, value):
        if isinstance(value, tuple):
            label, probs = value
            data = super().postprocess(probs)
            data.label = label
            data.confidences = sorted(data.confidences, key=lambda c: c.label != label)  # stable: the rest by score
            return data
        return super().postprocess(value)


def user_errors(fn: Callable) -> Callable:
    """Every failure reaches the UI as a short message (gr.Error), never a stack trace; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageLoadError, ServingError) as error:  # a bad image, an unknown or broken model: for the user
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:  # a bug: logged with its traceback, a short message for the user
            logger.exception("request failed")
            raise gr.Error("Internal error while processing the request; see the server log.",
                           print_exception=False) from None

    return wrapper


__all__ = ["BoundedSlider", "DecisionLabel", "RawUploadImage", "user_errors"]
