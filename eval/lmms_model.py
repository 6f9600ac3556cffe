"""lmms-eval model ``svdprune_llava``: every svdprune method on any lmms-eval task, built on :func:`svdprune.prune`.

    pip install -e ".[lmms]"
    lmms-eval --model svdprune_llava \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=svd,budget=32,tau=0.9 --tasks gqa,textvqa_val

Registered through lmms-eval's ``lmms_eval.models`` entry point (pyproject.toml), not a fork of lmms-eval.

What it feeds the model is run.py's protocol, not llava-hf's processor: official LLaVA-1.5 pixels
(:func:`svdprune.prompts.preprocess_image`: pad to square, as LLaVA's ``image_aspect_ratio='pad'``), the vicuna_v1
prompt with the image first and the task's context as the user turn (:func:`svdprune.prompts.vicuna_prompt`),
LLaVA's ``tokenizer_image_token``, the weights loaded as run.py loads them (``dtype=auto``: float16 on CUDA).
So on the same question text an lmms-eval answer is run.py's answer; what differs between the two protocols is
the tasks' own text and scoring (see the README: lmms-eval's ``gqa`` generates up to 16 tokens, its
``textvqa_val`` has no OCR tokens by default).

model_args: ``pretrained`` (hub id or folder), ``revision``, ``method``, ``budget``, ``device`` (auto), ``dtype``
(auto), ``batch_size`` (1), ``seed`` (0); every other key is a method parameter as in configs/method/<method>.yaml
(lists in brackets: ``layers=[0,1,2]``).

* ``generate_until``: greedy (or sampled when the task sets a temperature > 0), ``max_new_tokens`` and ``until``
  from the task; answers are cut at the first ``until`` string.
* ``loglikelihood``: the text of lmms-eval's own ``llava`` model (prompt + " " + continuation + "</s>", vicuna_v1's
  assistant turn) and the lm-eval-harness convention for the number: the *sum of log-probabilities* of the
  continuation tokens, and whether greedy decoding gives each of them (logits shifted by one). lmms-eval's
  ``llava`` returns the mean cross-entropy (positive, so a multiple-choice task would pick the least likely
  option) and compares unshifted logits; we do not copy that.
"""
from __future__ import annotations

import yaml
from tqdm import tqdm

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

MODEL_ID = "svdprune_llava"


def manifest():
    """The ``lmms_eval.models`` entry point's payload."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.SvdpruneLlava")


def _method_param(value):
    """lmms-eval hands ``layers=[0,1]`` over as the string "[0,1]": YAML reads lists, numbers, null."""
    return yaml.safe_load(value) if isinstance(value, str) else value


class SvdpruneLlava(lmms):
    """LLaVA-1.5 with one svdprune method, for lmms-eval."""

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", revision: str | None = None,
                 method: str = "vanilla", budget: int = 576, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 1, seed: int = 0, **method_params) -> None:
        super().__init__()
        import svdprune
        from svdprune.errors import check_int
        from svdprune.models import load_pretrained
        from svdprune.pruning import reads_question_text

        as_int = int(batch_size) if isinstance(batch_size, str) and batch_size.isdigit() else batch_size
        self.batch_size_per_gpu = check_int("batch_size", as_int, 1)  # lmms-eval hands --batch_size over as text
        self._lm = load_pretrained(str(pretrained), revision, dtype, device)
        params = {key: _method_param(value) for key, value in method_params.items()}
        self.handle = svdprune.prune(self._lm.model, str(method), int(budget), seed=int(seed),
                                     tokenizer=self._lm.tokenizer, **params)
        self.reads_question = reads_question_text(self.handle.method)

    @property
    def model(self):
        return self._lm.model

    @property
    def tokenizer(self):
        return self._lm.tokenizer

    @property
    def device(self):
        return self._lm.device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------ inputs as run.py builds them

    def _image(self, request_args) -> "PIL.Image.Image":  # noqa: F821
        doc_to_visual, doc_id, task, split = request_args[2:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1:
            raise ValueError(f"{MODEL_ID}: LLaVA-1.5 takes one image per question; {task} doc {doc_id} has "
                             f"{len(visuals)}")
        return visuals[0].convert("RGB")

    def _tokens(self, prompt: str) -> list[int]:
        """LLaVA's tokenisation of one prompt, ``<image>`` expanded to the tower's patch count (as a llava-hf
        processor expands it; the pruned forward replaces the run with the kept tokens)."""
        from svdprune.prompts import tokenizer_image_token

        lm = self._lm
        return tokenizer_image_token(prompt, lm.tokenizer, lm.image_token_id, lm.num_patches)

    def _batch(self, prompts: list[str], images: list, contexts: list[str]) -> dict:
        import torch

        from svdprune.prompts import preprocess_image
        from svdprune.surgery import _left_pad

        lm = self._lm
        ids, padding = _left_pad(lm, [self._tokens(p) for p in prompts])  # the engine's left padding
        pixels = torch.stack([preprocess_image(img, lm.image_size, lm.image_mean, lm.image_std) for img in images])
        if self.reads_question:  # TRIM: the question line as run.py hands it over (the task's whole context)
            self.handle.questions = list(contexts)
        return {"input_ids": ids, "attention_mask": (~padding).long(), "pixel_values": pixels}

    # ------------------------------------------------------------------ lmms-eval's interface

    def generate_until(self, requests: list[Instance]) -> list[str]:
        import torch

        from svdprune.prompts import vicuna_prompt

        answers: list[str] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{MODEL_ID} {self.handle.method_name}")
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            contexts = [request.args[0] for request in chunk]
            settings = dict(chunk[0].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(settings.get("temperature") or 0)
            inputs = self._batch([vicuna_prompt(context.replace("<image>", "").strip(), None) for context in contexts],
                                 [self._image(request.args) for request in chunk], contexts)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": settings.get("top_p")} \
                if temperature > 0 else {"do_sample": False}
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=int(settings.get("max_new_tokens", 128)),
                                          num_beams=int(settings.get("num_beams") or 1),
                                          pad_token_id=self.tokenizer.pad_token_id, **sampling)
            for ids in out[:, inputs["input_ids"].shape[1]:].tolist():
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                for stop in until:
                    if stop and stop in text:
                        text = text[:text.index(stop)]
                answers.append(text)
            bar.update(len(chunk))
        bar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        import torch

        from svdprune.prompts import vicuna_prompt

        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc=f"{MODEL_ID} loglikelihood"):
            context, target = request.args[0], request.args[1]
            continuation = target if isinstance(target, str) else target(
                self.task_dict[request.args[4]][request.args[5]][request.args[3]])
            prompt = vicuna_prompt(context.replace("<image>", "").strip(), None)
            eos = self.tokenizer.eos_token or "</s>"
            context_len = len(self._tokens(prompt))
            inputs = self._batch([f"{prompt} {continuation}{eos}"], [self._image(request.args)], [context])
            with torch.inference_mode():
                logits = self.model(**inputs).logits[0, context_len - 1:-1].float()  # predicts each continuation id
            targets = inputs["input_ids"][0, context_len:]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
            results.append((float(logprobs.sum()), bool((logits.argmax(-1) == targets).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID}: multi-round generation is not supported (one image, one turn)")
