"""Text prompt tokenizer for SAM 3: CLIP byte-level BPE, fixed context of 32 tokens.

``Sam3Tokenizer`` wraps a ``tokenizers.Tokenizer`` loaded from a CLIP ``tokenizer.json`` and
produces exactly what transformers' ``CLIPTokenizerFast(text, padding="max_length",
max_length=32, truncation=True)`` produces: ``<|startoftext|> tokens... <|endoftext|>`` then
pad tokens (``<|endoftext|>`` unless the checkpoint says otherwise), with an attention mask of
ones over the real tokens. Too-long prompts keep their final ``<|endoftext|>`` (the text in
between is cut), as the official CLIP tokenizer does.

``build_clip_tokenizer`` trains a small tokenizer with the same pipeline on a built-in word
list; the tiny demo checkpoint ships it because the real 49408-token CLIP vocabulary cannot be
downloaded on machines without internet.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# CLIP's word splitter: contractions, runs of letters, single digits, runs of other non-space
# characters. Whitespace between the pieces is dropped.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class Sam3Tokenizer:
    """Prompts -> fixed-length ``(input_ids, attention_mask)`` for the SAM 3 text encoder.

    Args:
        tokenizer: a CLIP-style ``tokenizers.Tokenizer`` (it is copied, never modified).
        context_length: tokens per prompt, ``TextConfig.max_position_embeddings`` (32 for SAM 3).
        pad_token: the padding token; CLIP pads with ``<|endoftext|>``.
    """

    def __init__(self, tokenizer: Tokenizer, context_length: int = 32, pad_token: str = EOS_TOKEN) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        # A private copy: padding/truncation settings are per-instance state of a Tokenizer.
        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self.context_length = context_length
        self.bos_token_id = self._require_id(BOS_TOKEN)
        self.eos_token_id = self._require_id(EOS_TOKEN)
        self.pad_token_id = self._require_id(pad_token)
        # Set rather than trusted from the file, as transformers' CLIP tokenizer does: every
        # prompt is <|startoftext|> ... <|endoftext|>, and truncation leaves room for both.
        self._tok.post_processor = _clip_post_processor(self.bos_token_id, self.eos_token_id)
        self._tok.enable_truncation(max_length=context_length, direction="right", strategy="longest_first")
        self._tok.enable_padding(
            direction="right", pad_id=self.pad_token_id, pad_token=pad_token, length=context_length
        )

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 32, pad_token: str | None = None) -> Sam3Tokenizer:
        """Load ``tokenizer.json`` (or a directory holding it).

        The pad token comes from ``pad_token``, else from a ``tokenizer_config.json`` or
        ``special_tokens_map.json`` next to the file (as transformers reads it), else CLIP's default.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if pad_token is None:
            pad_token = _pad_token_from_configs(path.parent) or EOS_TOKEN
        return cls(Tokenizer.from_file(str(path)), context_length=context_length, pad_token=pad_token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize ``P`` prompts -> ``input_ids`` [P, L] int64 and ``attention_mask`` [P, L] int64 (1 = token)."""
        if isinstance(prompts, str):
            raise TypeError("encode expects a list of prompts, got a single string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} is {type(p).__name__}, expected str")
            if not p.strip():
                raise ValueError(f"prompt {i} is empty or whitespace only; a text prompt needs at least one word")
        if not prompts:
            return (
                torch.empty(0, self.context_length, dtype=torch.long),
                torch.empty(0, self.context_length, dtype=torch.long),
            )
        encodings = self._tok.encode_batch(list(prompts))
        for p, enc in zip(prompts, encodings, strict=True):
            if enc.overflowing:
                logger.warning(
                    "text prompt %r is longer than %d tokens; truncated to %r",
                    p, self.context_length, self.decode(enc.ids),
                )
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return input_ids, attention_mask

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids back to text (special tokens dropped; ``</w>`` marks become spaces)."""
        text = self._tok.decode(list(ids), skip_special_tokens=True)
        return text.replace(END_OF_WORD, " ").strip()

    def _require_id(self, token: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token!r} token; is this a CLIP tokenizer.json?")
        return token_id


def _pad_token_from_configs(directory: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = directory / name
        if not f.is_file():
            continue
        pad = json.loads(f.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            return pad
    return None


# -- building a small CLIP-style tokenizer ---------------------------------------------------


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the rest are shifted to code points 256+
    so that every byte has a visible, non-whitespace character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    printable_set = set(printable)
    chars = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable_set]


def _set_clip_pipeline(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()


def build_clip_tokenizer(vocab_size: int) -> Tokenizer:
    """A CLIP-style byte-level BPE tokenizer with exactly ``vocab_size`` ids.

    Layout follows CLIP: ids 0-255 are the byte characters, 256-511 the same with ``</w>``,
    then learned merges, then ``<|startoftext|>`` = ``vocab_size - 2`` and ``<|endoftext|>`` =
    ``vocab_size - 1`` (also the unknown token). Merges are learned from a built-in English word
    list. The result is deterministic: the same ``vocab_size`` always gives the same file.
    """
    alphabet = _byte_alphabet()
    base = alphabet + [c + END_OF_WORD for c in alphabet]
    num_merges = vocab_size - len(base) - 2
    if num_merges < 0:
        raise ValueError(f"vocab_size must be at least {len(base) + 2}, got {vocab_size}")

    # Words exactly as the finished tokenizer will see them: its own normalizer and pre-tokenizer.
    pipeline = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD))
    _set_clip_pipeline(pipeline)
    word_counts: Counter[str] = Counter()
    for line in _CORPUS.splitlines():
        normalized = pipeline.normalizer.normalize_str(line)
        word_counts.update(piece for piece, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized))
    merges = _learn_merges(word_counts, num_merges)
    vocab = {tok: i for i, tok in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) != len(base) + num_merges:
        raise ValueError(
            f"the built-in corpus yields only {len(vocab) - len(base)} merged tokens; vocab_size {vocab_size} "
            f"needs {num_merges}"
        )
    vocab[BOS_TOKEN] = vocab_size - 2
    vocab[EOS_TOKEN] = vocab_size - 1

    tok = Tokenizer(
        BPE(
            vocab=vocab, merges=merges, unk_token=EOS_TOKEN, continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD, fuse_unk=False,
        )
    )
    _set_clip_pipeline(tok)
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    tok.post_processor = _clip_post_processor(vocab_size - 2, vocab_size - 1)
    return tok


def _clip_post_processor(bos_id: int, eos_id: int) -> processors.PostProcessor:
    return processors.RobertaProcessing(
        (EOS_TOKEN, eos_id), (BOS_TOKEN, bos_id), trim_offsets=False, add_prefix_space=False
    )


def _learn_merges(word_counts: Counter[str], num_tokens: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair, ties by the smaller pair.

    Stops once the merges have made ``num_tokens`` distinct new tokens (two merges can make the
    same string, e.g. ``ab+c`` and ``a+bc``) or nothing is left to merge.

    A plain loop rather than ``tokenizers.trainers.BpeTrainer``: that trainer breaks count ties
    by hash order, so two runs on the same corpus can learn different merges.
    """
    # Each word is a list of symbols; the last one carries the end-of-word suffix, as in CLIP.
    words = [([*w[:-1], w[-1] + END_OF_WORD], n) for w, n in sorted(word_counts.items()) if w]
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    while len(made) < num_tokens:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words:
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        merged = best[0] + best[1]
        made.add(merged)
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    symbols[i : i + 2] = [merged]
                i += 1
    return merges


# Training text for build_clip_tokenizer: everyday English, object and scene words (the kind of
# concepts people prompt SAM 3 with), phrases separated by ";".
_CORPUS = """\
a photo of a person walking on the street next to a red car
the man and the woman are standing near the white truck ; a child playing with a small dog in the green park
people wearing yellow helmets and orange safety vests at the construction site
a forklift moving boxes inside the warehouse ; a worker without a helmet climbing a ladder
cars, buses, trucks, bicycles and motorcycles on the road ; a cat sleeping on the sofa in the living room
two horses running across the field under a blue sky ; the bird is sitting on a tree branch
a boat sailing on the lake near the mountains ; an airplane flying over the city at night
a train arriving at the station ; a traffic light, a stop sign and a fire hydrant on the sidewalk
a bench, a chair, a table and a couch ; a laptop, a keyboard, a mouse and a cell phone on the desk
a bottle, a cup, a fork, a knife, a spoon and a bowl
a banana, an apple, an orange, a sandwich, a pizza and a cake ; broccoli, carrots, a hot dog and a donut
a bed, a toilet, a sink, a refrigerator, an oven and a microwave
a television, a remote control, a clock, a vase and a book
scissors, a teddy bear, a hair drier and a toothbrush
an umbrella, a handbag, a tie, a suitcase and a backpack
a frisbee, skis, a snowboard, a sports ball, a kite and a baseball bat
a baseball glove, a skateboard, a surfboard and a tennis racket
an elephant, a bear, a zebra, a giraffe, a sheep and a cow ; a potted plant and a dining table
the shopping cart in the parking lot ; a delivery van parked in front of the building
a pedestrian crossing the street with a stroller ; smoke and fire coming from the roof of the house
a package left at the door ; someone carrying a large black bag ; a police officer, a firefighter and a doctor
a soccer player kicking the ball ; the crowd watching the game in the stadium
a wooden fence, a metal gate and a brick wall ; windows, doors, stairs and an elevator
a pallet of cardboard boxes stacked on the shelf ; a crane lifting steel beams ; an excavator digging a hole
a tractor working in the farm field ; a container ship at the port ; a person riding a horse on the beach
waves crashing on the rocks ; the sun is shining and the water is bright
a shadow of the tall tree on the grass ; snow covered roofs in winter ; rain falling on the umbrella
a glass of water and a plate of food ; a chef cooking in the kitchen ; a student reading a book in the library
the teacher writing on the board ; a nurse helping a patient in the hospital
a runner jumping over the hurdle ; a swimmer diving into the pool ; the dog catching a frisbee
a kitten chasing a ball of yarn ; a squirrel eating a nut ; a duck swimming in the pond
a fish jumping out of the river ; a monkey climbing the tree ; a lion resting in the shade
a tiger walking through the jungle ; a camera mounted on the pole ; a drone flying above the field
a helicopter landing on the roof ; a motorcycle helmet and leather gloves
a man in a blue shirt and black pants ; a woman in a long dress holding a phone
a girl with a pink hat and a boy with glasses ; an old man sitting on a wooden chair
a baby sleeping in the crib ; a family eating dinner together ; friends laughing and talking at the party
a musician playing the guitar ; a drummer and a singer on the stage ; a painting hanging on the wall
a lamp, a mirror and a carpet ; a computer screen showing a chart ; a printer and a pile of paper
a phone charging on the table ; keys, a wallet and sunglasses ; a ring, a necklace and a watch
shoes, boots, socks and a jacket ; a coat, a scarf and a sweater
a hammer, a screwdriver, a wrench and a drill ; a ladder leaning against the wall
a bucket of paint and a brush ; a wheelbarrow full of sand ; cones and barriers around the work zone
a worker wearing gloves and goggles ; a person lying on the floor ; someone falling down the stairs
a person running away quickly ; people waiting in line at the entrance ; a security guard checking bags
an empty room with white walls ; a dark street with bright lights ; a busy market with many stalls
fresh fruit and vegetables for sale ; a bakery with bread and cookies ; a coffee shop with cups and saucers
a red apple, a yellow lemon and green grapes ; three small birds and four big dogs
five cars, six trucks and seven buses ; eight people, nine chairs and ten tables
one hundred and twenty three ; the first, second and third place ; left, right, up, down, front and back
inside, outside, above, below, between and behind ; quickly, slowly, carefully, suddenly and finally
happy, sad, angry, tired, hungry and thirsty ; beautiful, ugly, clean, dirty, wet and dry
open, closed, broken, new, old and young ; morning, afternoon, evening and night
monday, tuesday, wednesday, thursday, friday, saturday and sunday
january, february, march, april, may, june, july, august, september, october, november, december
spring, summer, autumn and winter ; north, south, east and west ; circle, square, triangle, rectangle and line
purple, brown, gray, silver and gold ; wood, metal, plastic, glass, stone, paper and cloth
it's a dog, they're cats, we've arrived, i'm here, you'll see, he'd go
don't stop, can't wait, won't move, isn't it, aren't they ; what, where, when, why, who, which and how
this, that, these, those, there, here and everywhere ; always, never, sometimes, often, usually and rarely
because, although, however, therefore, otherwise and unless
vehicle, animal, object, instance, concept, region and mask
segment, track, detect, follow, identify, count and measure
"""
