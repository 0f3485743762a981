"""One emotion vocabulary, and each dataset's class names mapped onto it.

Datasets spell the same emotion differently (CK+ ``anger``/``happy``, FER2013 ``angry``/``sad``,
FER+ ``happiness``/``sadness``). Labels stay as each dataset spells them (so folders and
files match what users downloaded); the vocabulary below is what comparisons across
datasets use: cross-dataset evaluation scores a model only on the emotions both sides share.

=========  ==========  ========  =========  ==========
emotion    CK+         FER2013   FER+       synthfaces
=========  ==========  ========  =========  ==========
neutral    -           neutral   neutral    neutral
happiness  happy       happy     happiness  happy
surprise   surprise    surprise  surprise   surprise
sadness    sadness     sad       sadness    sad
anger      anger       angry     anger      angry
disgust    disgust     disgust   disgust    disgust
fear       fear        fear      fear       fear
contempt   contempt    -         contempt   -
=========  ==========  ========  =========  ==========
"""

from __future__ import annotations

from dataclasses import dataclass

# The vocabulary, in the FER+ vote order.
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")

# Other spellings found in datasets (lower case) -> the vocabulary's word.
SYNONYMS = {
    "happy": "happiness",
    "joy": "happiness",
    "surprised": "surprise",
    "sad": "sadness",
    "angry": "anger",
    "mad": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "contemptuous": "contempt",
    "calm": "neutral",
}


def canonical(name: str) -> str | None:
    """The vocabulary's word for a class name (``'Angry'`` -> ``'anger'``), or None if it is no emotion."""
    key = name.strip().lower()
    if key in EMOTIONS:
        return key
    return SYNONYMS.get(key)


def vocabulary_mapping(class_names: list[str]) -> dict[str, str | None]:
    """``{class name: emotion or None}`` for a dataset's classes."""
    return {c: canonical(c) for c in class_names}


@dataclass
class SharedClasses:
    """How the classes of a model and of a dataset line up on the vocabulary."""

    emotions: list[str]  # shared emotions, in the vocabulary's order
    model_idx: list[int]  # for each shared emotion, the model's output index
    data_idx: list[int]  # for each shared emotion, the dataset's label index
    model_only: list[str]  # model classes the dataset lacks
    data_only: list[str]  # dataset classes the model lacks (their images are not scored)


def class_key(name: str) -> str:
    """What a class is matched by across datasets: its emotion (:func:`canonical`), else its own name,
    trimmed and lower-cased (so two datasets' ``Other`` classes still match)."""
    return canonical(name) or name.strip().lower()


def common_classes(*class_lists: list[str]) -> list[str]:
    """The class keys (:func:`class_key`) every list has, emotions in the vocabulary's order, then others by name."""
    if not class_lists:
        return []
    common = set.intersection(*({class_key(c) for c in names} for names in class_lists))
    order = {e: i for i, e in enumerate(EMOTIONS)}
    return sorted(common, key=lambda e: (order.get(e, len(order)), e))


def shared_classes(model_classes: list[str], data_classes: list[str]) -> SharedClasses:
    """Line up a model's classes and a dataset's on the vocabulary (:func:`common_classes`)."""
    model_of = {class_key(c): i for i, c in enumerate(model_classes)}
    data_of = {class_key(c): i for i, c in enumerate(data_classes)}
    common = common_classes(model_classes, data_classes)
    return SharedClasses(
        emotions=common,
        model_idx=[model_of[e] for e in common],
        data_idx=[data_of[e] for e in common],
        model_only=[c for c in model_classes if class_key(c) not in data_of],
        data_only=[c for c in data_classes if class_key(c) not in model_of],
    )
