"""Prompt, image-token placement and pixels exactly as LLaVA-1.5's evaluation builds them."""
import numpy as np
import torch
from PIL import Image

from svdprune.prompts import expand_to_square, preprocess_image, tokenizer_image_token, vicuna_prompt


def test_vicuna_v1_prompt_text():
    assert vicuna_prompt("What is it?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it?\n"
        "Answer the question using a single word or phrase. ASSISTANT:")
    assert vicuna_prompt("Q", instruction=None).endswith("USER: <image>\nQ ASSISTANT:")


def test_image_tokens_placed_like_llava_tokenizer_image_token(tiny):
    tok = tiny.tokenizer
    prompt = vicuna_prompt("What color?")
    before, after = prompt.split("<image>")
    ids = tokenizer_image_token(prompt, tok, tiny.image_token_id, 7)
    # chunk 0 keeps its BOS, chunk 1 is tokenised on its own and loses its BOS
    assert ids == tok(before).input_ids + [tiny.image_token_id] * 7 + tok(after).input_ids[1:]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(tiny.image_token_id) == 7


def test_pad_to_square_uses_clip_mean_colour_and_centres():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand_to_square(image, (122, 116, 104))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((0, 39)) == (122, 116, 104)
    assert square.getpixel((0, 10)) == (255, 0, 0) and square.getpixel((39, 29)) == (255, 0, 0)
    assert square.getpixel((0, 9)) == (122, 116, 104) and square.getpixel((0, 30)) == (122, 116, 104)


def test_pixels_equal_hf_llava_image_processor_with_padding():
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (180, 300, 3), dtype=np.uint8))
    hf = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    expected = torch.as_tensor(np.asarray(hf(image, return_tensors="np")["pixel_values"][0]))
    ours = preprocess_image(image)
    assert ours.shape == (3, 336, 336)
    torch.testing.assert_close(ours, expected.float(), atol=1e-5, rtol=0)
