"""lmms-eval models ``svdprune_llava``, ``svdprune_qwen25vl`` and ``svdprune_llava_next``: every svdprune method on any
lmms-eval task, built on :func:`svdprune.prune`.

    pip install -e ".[lmms]"
    lmms-eval --model svdprune_llava \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=svd,budget=32,tau=0.9 --tasks gqa,textvqa_val
    lmms-eval --model svdprune_qwen25vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=svd,budget=64 --tasks gqa

``svdprune_qwen25vl`` feeds Qwen2.5-VL as run.py's ``model=qwen25vl_7b`` does: the model card's image processor at
``min_pixels``..``max_pixels`` (model_args; the model card's by default) and chat prompt with the task's text as the
question; loglikelihood scores the continuation as the assistant turn (``...assistant\\n{continuation}<|im_end|>``).
The rest of this docstring is about ``svdprune_llava``.

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
QWEN_MODEL_ID = "svdprune_qwen25vl"
NEXT_MODEL_ID = "svdprune_llava_next"


def manifest():
    """The ``lmms_eval.models`` entry point's payload (LLaVA-1.5)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.SvdpruneLlava")


def manifest_qwen25vl():
    """The ``lmms_eval.models`` entry point's payload (Qwen2.5-VL)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=QWEN_MODEL_ID, simple_class_path=f"{__name__}.SvdpruneQwen25VL")


def manifest_llava_next():
    """The ``lmms_eval.models`` entry point's payload (LLaVA-NeXT)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=NEXT_MODEL_ID, simple_class_path=f"{__name__}.SvdpruneLlavaNext")


def _method_param(value):
    """lmms-eval hands ``layers=[0,1]`` over as the string "[0,1]": YAML reads lists, numbers, null."""
    return yaml.safe_load(value) if isinstance(value, str) else value


class _SvdpruneModel(lmms):
    """One svdprune method on a model family, for lmms-eval: the loop over requests here, the family's prompt, token
    ids and pixels in the subclass (what run.py feeds that family), the pruning through :func:`svdprune.prune`."""

    model_id = ""
    family = ""  # the svdprune model family (svdprune/families/<family>.py)

    def __init__(self, pretrained: str, revision: str | None, method: str, budget: int, device: str, dtype: str,
                 batch_size: int, seed: int, method_params: dict, **load_settings) -> None:
        super().__init__()
        from omegaconf import OmegaConf

        import svdprune
        from svdprune.errors import check_int
        from svdprune.families import family, load_model
        from svdprune.pruning import reads_question_text

        as_int = int(batch_size) if isinstance(batch_size, str) and batch_size.isdigit() else batch_size
        self.batch_size_per_gpu = check_int("batch_size", as_int, 1)  # lmms-eval hands --batch_size over as text
        self._family = family(self.family)
        model_cfg = {"family": self.family, "kind": "pretrained", "path": str(pretrained), "revision": revision,
                     "dtype": dtype, "device": device, **{k: v for k, v in load_settings.items() if v is not None}}
        self._lm = load_model(OmegaConf.create(model_cfg), progress=False)  # as run.py loads the family
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

    # ------------------------------------------------------------------ the family's part (svdprune/families/)

    def _prompt(self, context: str) -> str:
        """The prompt text of one task context: run.py's prompt for the family with the context as the question."""
        return self._family.prompt(context.replace("<image>", "").strip(), None)

    def _answer_text(self, prompt: str, continuation: str) -> str:
        """The prompt followed by an assistant turn holding ``continuation`` (loglikelihood)."""
        return self._family.answer_text(self._lm, prompt, continuation)

    def _tokens(self, prompt: str, image) -> list[int]:
        """The token ids of a prompt whose image placeholder is expanded to the image's unpruned token count (as the
        family's HF processor expands it; the pruned forward replaces the run with the kept tokens)."""
        return self._family.full_prompt_ids(self._lm, prompt, image)

    def _batch(self, prompts: list[str], images: list, contexts: list[str]) -> dict:
        if self.reads_question:  # TRIM: the question line as run.py hands it over (the task's whole context)
            self.handle.questions = list(contexts)
        return self._family.model_inputs(self._lm, prompts, images)

    def _image(self, request_args) -> "PIL.Image.Image":  # noqa: F821
        doc_to_visual, doc_id, task, split = request_args[2:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1:
            raise ValueError(f"{self.model_id}: one image per question; {task} doc {doc_id} has {len(visuals)}")
        return visuals[0].convert("RGB")

    # ------------------------------------------------------------------ lmms-eval's interface

    def generate_until(self, requests: list[Instance]) -> list[str]:
        import torch

        answers: list[str] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_id} {self.handle.method_name}")
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            contexts = [request.args[0] for request in chunk]
            settings = dict(chunk[0].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(settings.get("temperature") or 0)
            inputs = self._batch([self._prompt(context) for context in contexts],
                                 [self._image(request.args) for request in chunk], contexts)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": settings.get("top_p")} \
                if temperature > 0 else {"do_sample": False}
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=int(settings.get("max_new_tokens", 128)),
                                          num_beams=int(settings.get("num_beams") or 1),
                                          pad_token_id=self._lm.pad_token_id, **sampling)
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

        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_id} loglikelihood"):
            context, target = request.args[0], request.args[1]
            continuation = target if isinstance(target, str) else target(
                self.task_dict[request.args[4]][request.args[5]][request.args[3]])
            prompt = self._prompt(context)
            image = self._image(request.args)
            context_len = len(self._tokens(prompt, image))
            inputs = self._batch([self._answer_text(prompt, continuation)], [image], [context])
            with torch.inference_mode():
                logits = self.model(**inputs).logits[0, context_len - 1:-1].float()  # predicts each continuation id
            targets = inputs["input_ids"][0, context_len:]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
            results.append((float(logprobs.sum()), bool((logits.argmax(-1) == targets).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{self.model_id}: multi-round generation is not supported (one image, one turn)")


class SvdpruneLlava(_SvdpruneModel):
    """LLaVA-1.5 with one svdprune method, for lmms-eval."""

    model_id = MODEL_ID
    family = "llava15"

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", revision: str | None = None,
                 method: str = "vanilla", budget: int = 576, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 1, seed: int = 0, **method_params) -> None:
        super().__init__(pretrained, revision, method, budget, device, dtype, batch_size, seed, method_params)


class SvdpruneQwen25VL(_SvdpruneModel):
    """Qwen2.5-VL with one svdprune method (those of ``svdprune.families.supported_methods("qwen25vl")``), for
    lmms-eval: the model card's image processor at ``min_pixels``..``max_pixels`` and chat prompt, as run.py's
    ``model=qwen25vl_7b``."""

    model_id = QWEN_MODEL_ID
    family = "qwen25vl"

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", revision: str | None = None,
                 method: str = "vanilla", budget: int = 64, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 1, seed: int = 0, min_pixels: int | None = None, max_pixels: int | None = None,
                 **method_params) -> None:
        super().__init__(pretrained, revision, method, budget, device, dtype, batch_size, seed, method_params,
                         min_pixels=int(min_pixels) if min_pixels else None,
                         max_pixels=int(max_pixels) if max_pixels else None)


class SvdpruneLlavaNext(_SvdpruneModel):
    """LLaVA-NeXT with one svdprune method (those of ``svdprune.families.supported_methods("llava_next")``), for
    lmms-eval: llava-hf's AnyRes processor and the vicuna_v1 prompt, as run.py's ``model=llava_next_7b``."""

    model_id = NEXT_MODEL_ID
    family = "llava_next"

    def __init__(self, pretrained: str = "llava-hf/llava-v1.6-vicuna-7b-hf", revision: str | None = None,
                 method: str = "vanilla", budget: int = 2928, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 1, seed: int = 0, **method_params) -> None:
        super().__init__(pretrained, revision, method, budget, device, dtype, batch_size, seed, method_params)
