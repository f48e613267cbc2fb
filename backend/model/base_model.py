"""What training and prediction need to know about a base model, read from the model itself (its config, its
tokenizer, its module structure), never from a list of model names: whether it can be fine-tuned for NER at all,
how its tokenizer must read pre-split words, what becomes of a classification head it already has, which of its
parameters are the embedding block and which the transformer layers, and how long a window its positions allow.

Every function here that adapts something returns a sentence saying so; ``backend.model.train`` logs those and
keeps them in the version's metrics.json (and the training run in its manifest).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch


class BaseModelError(ValueError):
    """A base model that cannot be fine-tuned for NER here; the message names it and says what is wrong, in one
    line (the CLI prints it as ``error: ...``, a training run reports it as its failure)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def check_base_model(name: str):
    """The base model's config, when the model can be fine-tuned for token classification; else ``BaseModelError``:
    a folder that does not exist, a folder without config.json, a config that does not load, a model type for which
    transformers has no token-classification head."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING

    folder = Path(name).expanduser()
    if _looks_like_a_path(name):
        if not folder.is_dir():
            raise BaseModelError(f"base model {name}: no such folder")
        if not (folder / "config.json").is_file():
            raise BaseModelError(f"base model {name}: the folder holds no config.json, so it is not a saved "
                                 "transformers model (save one with save_pretrained, or give a hub id)")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as error:
        raise BaseModelError(f"base model {name}: its config cannot be read: {_first_line(error)}") from None
    if type(config) not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING:
        raise BaseModelError(
            f"base model {name} is a {config.model_type!r} model, for which transformers has no token-classification "
            "head (AutoModelForTokenClassification); choose an encoder such as BERT, RoBERTa, DeBERTa or ModernBERT")
    return config


# --- the tokenizer: pre-split words read as in running text ---

# Words of running text ("x" first: in running text the first word has no space before it, so it is not compared).
_PROBE_WORDS = ("x", "good", "thai", "food", "tonight")


def _word_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """The subword ids of each of ``words`` when the tokenizer is given them pre-split."""
    encoded = tokenizer([list(words)], is_split_into_words=True, add_special_tokens=False)
    pieces: list[list[int]] = [[] for _ in words]
    for token_id, word_id in zip(encoded["input_ids"][0], encoded.word_ids(0)):
        if word_id is not None:
            pieces[word_id].append(token_id)
    return pieces


def reads_words_as_in_text(tokenizer, words: Sequence[str] = _PROBE_WORDS) -> bool:
    """True when every word but the first gets, pre-split, the same subwords as in the running text of the words
    joined by spaces. A byte-level BPE tokenizer without ``add_prefix_space`` fails this: it encodes a pre-split
    word without the word-start marker it has after a space in text (``thai`` as ``th a i``, not ``Ġthai``), so
    the model would read every word as the middle of the one before it."""
    text = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    first = tokenizer(words[0], add_special_tokens=False)["input_ids"]
    rest = [i for piece in _word_pieces(tokenizer, words)[1:] for i in piece]
    return text[:len(first)] == first and text[len(first):] == rest


def _with_prefix_space(pre_tokenizer: dict) -> dict:
    """A tokenizers pre-tokenizer (as JSON) whose byte-level or metaspace parts mark the start of every word."""
    if pre_tokenizer.get("type") == "ByteLevel":
        return {**pre_tokenizer, "add_prefix_space": True}
    if pre_tokenizer.get("type") == "Metaspace":
        return {**pre_tokenizer, "prepend_scheme": "always",
                **({"add_prefix_space": True} if "add_prefix_space" in pre_tokenizer else {})}
    if pre_tokenizer.get("type") == "Sequence":
        return {**pre_tokenizer, "pretokenizers": [_with_prefix_space(p) for p in pre_tokenizer["pretokenizers"]]}
    return pre_tokenizer


def _mark_word_starts(tokenizer) -> None:
    """Set the word-start marker in the tokenizer's own pipeline, so that it is saved with it (tokenizer.json)."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    state = json.loads(backend.to_str())
    if state.get("pre_tokenizer"):
        state["pre_tokenizer"] = _with_prefix_space(state["pre_tokenizer"])
        backend.pre_tokenizer = Tokenizer.from_str(json.dumps(state)).pre_tokenizer
    tokenizer.add_prefix_space = True
    tokenizer.init_kwargs["add_prefix_space"] = True  # tokenizer_config.json: classes that rebuild it read this


@dataclass(frozen=True)
class WordTokenization:
    """How the tokenizer reads pre-split words: ``marker`` is "as in text" (nothing to do: WordPiece, a
    SentencePiece that marks every word), "added" (the word-start marker was switched on: byte-level BPE) or
    "missing" (it could not be: words are read unlike running text, said in the notes); ``lowercase`` whether the
    tokenizer lower-cases (an uncased base) or keeps case (a cased one)."""

    tokenizer: str
    marker: str
    lowercase: bool

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "word_start_marker": self.marker, "lowercase": self.lowercase}


def _lowercases(tokenizer) -> bool:
    """Whether the tokenizer's normaliser lower-cases text (an uncased model) or keeps it (a cased one)."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    return normalizer is not None and normalizer.normalize_str("The Word") == "the word"


def load_tokenizer(name: str):
    """The base model's tokenizer, made to read pre-split words as it reads running text, and how it reads them
    (``WordTokenization``). A tokenizer that cannot say which word each subword comes from (a slow, Python-only
    tokenizer) is a ``BaseModelError``.

    The decision is made on the tokenizer's own output (``reads_words_as_in_text``): first through the class's own
    switch (``add_prefix_space=True``, as transformers' token-classification example sets for byte-level BPE), else
    in its tokenizers pipeline; either way the setting is saved with the tokenizer, so a trained version predicts
    with the very subwords it was trained on.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BaseModelError(f"base model {name}: its tokenizer cannot be loaded: {_first_line(error)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise BaseModelError(
            f"base model {name}: its tokenizer ({type(tokenizer).__name__}) is a slow, Python-only one, which cannot "
            "tell which word each subword comes from; a fast tokenizer (a tokenizer.json of the tokenizers library) "
            "is needed")
    marker = "as in text"
    if not reads_words_as_in_text(tokenizer):
        marker = "missing"
        try:
            switched = AutoTokenizer.from_pretrained(name, add_prefix_space=True)
        except (OSError, ValueError, TypeError):
            switched = None
        if switched is not None and switched.is_fast and reads_words_as_in_text(switched):
            tokenizer, marker = switched, "added"
        else:
            _mark_word_starts(tokenizer)
            if reads_words_as_in_text(tokenizer):
                marker = "added"
    return tokenizer, WordTokenization(type(tokenizer).__name__, marker, _lowercases(tokenizer))


def same_subwords(first, second, word_lists: Sequence[Sequence[str]]) -> bool:
    """True when two tokenizers give every word of ``word_lists`` the same subword ids (a saved tokenizer against
    the one a version was trained with)."""
    return all(_word_pieces(first, words) == _word_pieces(second, words) for words in word_lists if words)


# --- the classification head ---

@dataclass(frozen=True)
class Head:
    """What became of the base's token-classification head: ``outcome`` is "new" (the base had none), "kept" (it
    predicts exactly the project's BIO labels: a warm start of the head) or "replaced" (it predicted other labels);
    ``note`` says it in words."""

    outcome: str
    note: str


def _labels_of(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(len(config.id2label))]


def _has_token_classification_head(config) -> bool:
    return any(str(name).endswith("ForTokenClassification") for name in (config.architectures or ()))


def head_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """The output layer of the token-classification head: the last linear module outside the base model (its
    ``base_model_prefix``) with one output per label (ModernBERT's ``head.dense`` before it is not label-specific)."""
    prefix = model.base_model_prefix + "."
    outputs = [(name, module) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and not name.startswith(prefix)
               and module.out_features == model.config.num_labels]
    return outputs[-1:]


def _draw_again(model, modules: Sequence[torch.nn.Module]) -> None:
    """Initialise ``modules`` afresh, as the model's own init does for a new head."""
    for module in modules:
        for parameter in module.parameters(recurse=False):
            parameter._is_hf_initialized = False
        module._is_hf_initialized = False
        model._init_weights(module)


def load_token_classifier(name: str, config, bio_labels: Sequence[str]):
    """The base model with a token-classification head over ``bio_labels`` and what became of the head it had.

    A head that predicts exactly ``bio_labels`` (same labels, same order) is kept. A head of other labels is
    replaced by a new one drawn like any new head: of another size, transformers draws it (instead of stopping with
    a size mismatch); of the same size, its weights are drawn again here, so no label inherits the weights of an
    unrelated one. Draws come from torch's generator: the caller seeds it first.
    """
    from transformers import AutoModelForTokenClassification

    bio_labels = list(bio_labels)
    own_labels = _labels_of(config) if _has_token_classification_head(config) else None
    config.id2label = dict(enumerate(bio_labels))
    config.label2id = {tag: i for i, tag in enumerate(bio_labels)}
    model, info = AutoModelForTokenClassification.from_pretrained(
        name, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
    outputs = head_modules(model)
    names = {f"{module_name}.{p}" for module_name, module in outputs for p, _ in module.named_parameters()}
    missing = set(info.get("missing_keys", ())) & names
    mismatched = {entry[0] for entry in info.get("mismatched_keys", ())} & names
    count = f"{len(bio_labels)} labels"
    if not outputs or (names and missing == names):
        return model, Head("new", f"a new token-classification head for the project's {count}")
    if own_labels == bio_labels and not mismatched:
        return model, Head("kept", f"its token-classification head predicts exactly the project's {count}: kept "
                                   "(a warm start)")
    if not mismatched:
        _draw_again(model, [module for _, module in outputs])
    if own_labels is None:  # e.g. a sequence classifier's head, which loads into the same place
        return model, Head("replaced", f"its classification head (not a token-classification one) replaced by a "
                                       f"new one for the project's {count}")
    shown = ", ".join(own_labels[:9]) + (", ..." if len(own_labels) > 9 else "")
    return model, Head("replaced", f"its token-classification head of other labels ({len(own_labels)}: {shown}) "
                                   f"replaced by a new one for the project's {count}")


# --- the parts that training can keep fixed ---

def layer_stack(model) -> torch.nn.ModuleList | None:
    """The transformer layers, bottom first: the base model's list of ``num_hidden_layers`` modules of one class
    (``encoder.layer`` in BERT, ``transformer.layer`` in DistilBERT, ``layers`` in ModernBERT, ...); the largest
    such list when the config does not say the count; None when the structure has none (shared layers, as in
    ALBERT)."""
    wanted = getattr(model.config, "num_hidden_layers", None)
    best, best_size = None, -1
    for module in model.base_model.modules():
        if not isinstance(module, torch.nn.ModuleList) or not len(module):
            continue
        if len({type(child) for child in module}) != 1 or (wanted is not None and len(module) != wanted):
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = module, size
    return best


def embedding_block(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The base model's parameters that come before its first transformer layer: the vocabulary matrix, the
    position and type embeddings, their normalisation, and any projection to the hidden size (ELECTRA). With all of
    them fixed no gradient is computed below the first trainable layer. Without a layer stack: the vocabulary
    matrix alone."""
    stack = layer_stack(model)
    if stack is None:
        embeddings = model.get_input_embeddings()
        return [(name, p) for name, p in model.named_parameters() if p is embeddings.weight]
    first = {id(p) for p in stack.parameters()}
    block = []
    for name, parameter in model.base_model.named_parameters():
        if id(parameter) in first:
            break
        block.append((name, parameter))
    return block


def freeze(model, freeze_embeddings: bool, frozen_layers: int) -> tuple[int, list[str]]:
    """Keep the embedding block (``freeze_embeddings``) and the lowest ``frozen_layers`` transformer layers fixed:
    no gradient, no optimizer state, no update. Returns how many layers are fixed and a sentence for each knob that
    could not apply as asked."""
    notes = []
    stack = layer_stack(model)
    if freeze_embeddings:
        if stack is None:
            notes.append("freeze_embeddings: no stack of transformer layers found in the model's structure, so only "
                         "the vocabulary matrix is kept fixed")
        for _, parameter in embedding_block(model):
            parameter.requires_grad_(False)
    fixed = 0
    if frozen_layers:
        if stack is None:
            notes.append(f"frozen_layers {frozen_layers}: no stack of transformer layers found in the model's "
                         f"structure ({type(model.base_model).__name__}), so no layer is kept fixed")
        else:
            fixed = min(frozen_layers, len(stack))
            if fixed < frozen_layers:
                notes.append(f"frozen_layers {frozen_layers}: the model has {len(stack)} transformer layers, all "
                             "of them kept fixed")
            for layer in list(stack)[:fixed]:
                layer.requires_grad_(False)
    return fixed, notes


# --- positions ---

def position_limit(model) -> int | None:
    """The longest input the model's absolute position table covers: an embedding of the embedding block with
    ``max_position_embeddings`` rows, less the rows before its first position (RoBERTa counts positions from its
    padding index + 1: 514 rows, 512 positions). None for models without such a table (relative or rotary
    positions: DeBERTa-v2/v3, ModernBERT)."""
    rows = getattr(model.config, "max_position_embeddings", None)
    vocabulary = model.get_input_embeddings()
    block = {id(parameter) for _, parameter in embedding_block(model)}
    for module in model.base_model.modules():
        if (isinstance(module, torch.nn.Embedding) and id(module.weight) in block and module is not vocabulary
                and module.num_embeddings == rows):
            return module.num_embeddings - (module.padding_idx + 1 if module.padding_idx is not None else 0)
    return None


def window_limit(model) -> int | None:
    """The longest window the model can read: its position table's (``position_limit``), else the length its
    config declares (``max_position_embeddings``); None when it declares none."""
    limit = position_limit(model)
    if limit is not None:
        return limit
    declared = getattr(model.config, "max_position_embeddings", None)
    return declared if isinstance(declared, int) and declared > 0 else None
