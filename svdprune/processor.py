"""The llava-hf style processor files of a checkpoint folder, so that ``AutoProcessor.from_pretrained(folder)``
gives what run.py feeds the model: official LLaVA-1.5 pixels (``image_aspect_ratio='pad'``: pad to a square of
the mean colour, bicubic resize, normalise; the same values as :func:`svdprune.prompts.preprocess_image`) and
``<image>`` expanded to the vision tower's patch count, with the vicuna_v1 prompt as the chat template.

Used by the training scripts (scripts/train_mini.py, scripts/train_scenes.py) and by
``python -m svdprune.processor <folder>...`` to add the files to an existing folder (weights untouched).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .prompts import CLIP_MEAN, CLIP_STD, IMAGE_PLACEHOLDER, SYSTEM

# LLaVA-1.5's conv_vicuna_v1 for one user turn with the image first, as svdprune.prompts.vicuna_prompt builds it
# (a message's content is a list of {"type": "image"} / {"type": "text", "text": ...} parts, or a string)
VICUNA_CHAT_TEMPLATE = (
    '{{ "' + SYSTEM + '" }}'
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' }}{% else %}{{ ' ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_PLACEHOLDER + "\\n' }}{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


def image_processor_config(image_size: int, image_mean=CLIP_MEAN, image_std=CLIP_STD) -> dict:
    """LlavaImageProcessor settings of official LLaVA-1.5's preprocessing (pad to square, then CLIP's)."""
    return {
        "image_processor_type": "LlavaImageProcessorPil", "do_pad": True, "do_convert_rgb": True,
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,  # bicubic
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(image_mean), "image_std": list(image_std),
    }


def with_image_token(tokenizer):
    """``<image>`` as one special token (the id the model's ``image_token_id`` names), in place; and left padding,
    which batched ``generate`` needs. Returns the tokenizer."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # saved with it
    for key in ("is_local", "local_files_only"):  # from_pretrained's own arguments, not settings
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def write_processor(folder: str | Path, tokenizer, *, image_size: int, patch_size: int, image_mean=CLIP_MEAN,
                    image_std=CLIP_STD) -> None:
    """Save tokenizer (with :func:`with_image_token`), image processor and LlavaProcessor settings into
    ``folder`` (preprocessor_config.json, processor_config.json, chat_template.jinja, tokenizer files)."""
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    settings = {k: v for k, v in image_processor_config(image_size, image_mean, image_std).items()
                if k != "image_processor_type"}
    processor = LlavaProcessor(image_processor=LlavaImageProcessorPil(**settings),
                               tokenizer=with_image_token(tokenizer), patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=VICUNA_CHAT_TEMPLATE)
    processor.save_pretrained(str(folder))
    # the PIL backend by name (transformers would otherwise pick the torchvision one where torchvision is installed,
    # whose bicubic resize gives other pixels than official LLaVA's PIL resize); also as preprocessor_config.json,
    # which svdprune's loader and older transformers read
    folder = Path(folder)
    image = image_processor_config(image_size, image_mean, image_std)
    processor_file = folder / "processor_config.json"
    saved = json.loads(processor_file.read_text())
    saved["image_processor"] = image
    processor_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    (folder / "preprocessor_config.json").write_text(
        json.dumps({**image, "processor_class": "LlavaProcessor"}, indent=2, sort_keys=True) + "\n")


def add_to_folder(folder: str | Path) -> None:
    """Add the processor files to a LLaVA-1.5 folder (config.json, tokenizer) written without them."""
    from transformers import AutoTokenizer, LlavaConfig

    folder = Path(folder)
    config = LlavaConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id != config.image_token_id:
        raise SystemExit(f"{folder}: the tokenizer's {IMAGE_PLACEHOLDER} is id {image_id}, config.json's "
                         f"image_token_id is {config.image_token_id}")
    stats = json.loads((folder / "preprocessor_config.json").read_text()) if (
        folder / "preprocessor_config.json").is_file() else {}
    vision = config.vision_config
    write_processor(folder, tokenizer, image_size=vision.image_size, patch_size=vision.patch_size,
                    image_mean=stats.get("image_mean", CLIP_MEAN), image_std=stats.get("image_std", CLIP_STD))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    for folder in parser.parse_args(argv).folders:
        add_to_folder(folder)
        print(f"{folder}: AutoProcessor files written")


if __name__ == "__main__":
    main()
