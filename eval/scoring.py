"""Official answer scoring, re-implemented to give the same numbers as LLaVA-1.5's evaluation scripts.

``gqa`` (exact match): LLaVA-1.5 runs ``scripts/convert_gqa_for_eval.py`` on the model outputs
(``text.rstrip('.').lower()``; the outputs were already ``.strip()``-ed by ``model_vqa_loader``) and then
GQA's own ``eval/eval.py``, which counts ``prediction == question["answer"]`` over the balanced questions.
The reference answer is compared as it is stored (GQA answers are lowercase with no trailing period):
only the prediction is normalised, exactly as the official pipeline does.

``vqa`` (TextVQA accuracy): ``llava/eval/eval_textvqa.py`` with ``m4c_evaluator.TextVQAAccuracyEvaluator``.
Prediction and each of the 10 human answers go through the EvalAI answer processor (:func:`normalize_vqa`);
the score is min(1, matches / 3) averaged over the 10 leave-one-out subsets of the human answers.

``score_predictions`` re-scores a run's ``predictions.jsonl``; ``python -m eval.score`` is its CLI.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from svdprune.errors import UserError

from .datasets import read_jsonl

# ----------------------------------------------------------------------------------------------- GQA


def normalize_gqa(prediction: str) -> str:
    """The prediction as the official GQA pipeline sees it: whitespace-stripped, every trailing period
    removed, lowercased (in that order)."""
    return prediction.strip().rstrip(".").lower()


def gqa_accuracy(prediction: str, answer: str | list[str]) -> float:
    """1.0 if the normalised prediction equals the reference answer (the first one if a list), else 0.0."""
    if isinstance(answer, (list, tuple)):
        if not answer:
            raise ValueError("GQA scoring needs a reference answer, got an empty list")
        answer = answer[0]
    return float(normalize_gqa(prediction) == answer)


# ------------------------------------------------------------------------------------------- TextVQA
# The EvalAI / MMF answer processor (VQA's official normalisation) as LLaVA's m4c_evaluator applies it.
# Steps, in order:
#   1. lowercase; delete ',' and '?'; "'s" -> " 's" (so "what's" and "whats" do NOT normalise alike);
#      newlines and tabs -> spaces; strip;
#   2. each punctuation mark below is deleted when it touches a space anywhere in the text (or when the
#      text has a digit,digit comma, which step 1 already made impossible), otherwise replaced by a space;
#   3. a '.' not followed by a digit is deleted ("3.5" keeps its point). The official code passes
#      re.UNICODE (= 32) where re.sub expects ``count``, so at most 32 periods are deleted: kept here;
#   4. split on whitespace; number words zero..ten (and "none") -> digits; drop a / an / the;
#      missing-apostrophe contractions ("dont") get their apostrophe back; join with single spaces.

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # the official "(?!<=\d)" is a lookahead that can never fail at a '.'
_PERIOD_MAX = 32  # see step 3
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})


def _contraction_table() -> dict[str, str]:
    """Word -> replacement, the official table. Its capitalised keys ("Im", "Ive", "Id've", "I'dve") are
    left out: the text is lowercase by then, so they can never match. ``somebody'd -> somebodyd`` is an
    error in the official table, kept because it changes scores."""
    pairs = """
        aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't
        couldn'tve couldn't've | couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't
        hadnt hadn't | hadnt've hadn't've | hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd
        hed've he'd've | he'dve he'd've | hes he's | howd how'd | howll how'll | hows how's | isnt isn't
        itd it'd | itd've it'd've | it'dve it'd've | itll it'll | let's let's | maam ma'am
        mightnt mightn't | mightnt've mightn't've | mightn'tve mightn't've | mightve might've
        mustnt mustn't | mustve must've | neednt needn't | notve not've | oclock o'clock
        oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at | 'ow'sat 'ow's'at | shant shan't
        shed've she'd've | she'dve she'd've | she's she's | shouldve should've | shouldnt shouldn't
        shouldnt've shouldn't've | shouldn'tve shouldn't've | somebody'd somebodyd
        somebodyd've somebody'd've | somebody'dve somebody'd've | somebodyll somebody'll
        somebodys somebody's | someoned someone'd | someoned've someone'd've | someone'dve someone'd've
        someonell someone'll | someones someone's | somethingd something'd
        somethingd've something'd've | something'dve something'd've | somethingll something'll
        thats that's | thered there'd | thered've there'd've | there'dve there'd've | therere there're
        theres there's | theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll
        theyre they're | theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've
        weve we've | werent weren't | whatll what'll | whatre what're | whats what's | whatve what've
        whens when's | whered where'd | wheres where's | whereve where've | whod who'd
        whod've who'd've | who'dve who'd've | wholl who'll | whos who's | whove who've | whyll why'll
        whyre why're | whys why's | wont won't | wouldve would've | wouldnt wouldn't
        wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all | yall'll y'all'll
        y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've | y'all'dve y'all'd've
        youd you'd | youd've you'd've | you'dve you'd've | youll you'll | youre you're | youve you've
    """
    words = pairs.replace("|", " ").split()
    return dict(zip(words[0::2], words[1::2]))


_CONTRACTIONS = _contraction_table()


def normalize_vqa(answer: str) -> str:
    """An answer (prediction or human answer) after the official EvalAI processing (steps above)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # step 2: the test looks at the text as it was before any mark was processed
    source = text
    delete_all = _DIGIT_COMMA.search(source) is not None
    for mark in _PUNCTUATION:
        touches_space = (mark + " ") in source or (" " + mark) in source
        text = text.replace(mark, "" if (touches_space or delete_all) else " ")
    text = _PERIOD.sub("", text, count=_PERIOD_MAX)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction against the human answers (10 for TextVQA).

    For each answer i, the prediction is compared with the other answers: acc_i = min(1, matches / 3);
    the score is the mean of acc_i. With 10 answers of which k equal the prediction this is
    (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10: 0.3, 0.6, 0.9, 1.0 for k = 1, 2, 3, >=4.
    (The official evaluator asserts exactly 10 answers; any non-empty list is accepted here.)
    """
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer, got none")
    pred = normalize_vqa(prediction)
    matches = sum(normalize_vqa(a) == pred for a in answers)
    if matches == 0:
        return 0.0
    total = 0.0
    for human in answers:
        others = matches - (normalize_vqa(human) == pred)
        total += min(1.0, others / 3)
    return total / len(answers)


SCORERS = {
    "gqa": gqa_accuracy,
    "vqa": textvqa_accuracy,
}


def score(scorer: str, prediction: str, answers: list[str]) -> float:
    if scorer not in SCORERS:
        raise UserError(f"unknown scorer {scorer!r}; allowed: {', '.join(sorted(SCORERS))}")
    return SCORERS[scorer](prediction, answers)


# ------------------------------------------------------------------------------ predictions.jsonl


def score_predictions(path, scorer: str) -> dict:
    """Score a run's ``predictions.jsonl`` (one JSON object per line: question_id, prediction, answers,
    question_type, ...; other keys are ignored).

    Returns ``{"accuracy": percent, "n": count, "by_type": {type: {"accuracy": percent, "n": count}}}``.
    ``by_type`` has one entry per distinct ``question_type`` (lines without one are only in the total).
    A type with several levels separated by '/' (GQA's "structural/semantic", e.g. "query/rel") also
    gets one entry per level: "query/*" (every question whose structural type is query) and "*/rel"
    (every question whose semantic type is rel) -- GQA eval.py's "Accuracy / structural type" and
    "Accuracy / semantic type" tables.
    """
    if scorer not in SCORERS:
        raise UserError(f"unknown scorer {scorer!r}; allowed: {', '.join(sorted(SCORERS))}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {str(path)!r} does not exist")
    scores: list[float] = []
    groups: dict[str, list[float]] = defaultdict(list)
    seen: set[str] = set()
    for line_no, item in read_jsonl(path):
        try:
            question_id = str(item["question_id"])
            prediction = item["prediction"]
            answers = item["answers"]
            question_type = item.get("question_type")
            if not isinstance(prediction, str) or not isinstance(answers, list):
                raise TypeError("prediction must be a string and answers a list")
            value = SCORERS[scorer](prediction, [str(a) for a in answers])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path}:{line_no}: bad prediction line ({type(exc).__name__}: {exc}); need "
                            "question_id, prediction (str) and answers (non-empty list)") from None
        if question_id in seen:
            raise UserError(f"{path}:{line_no}: question_id {question_id!r} appears twice; "
                            "a predictions file holds one line per question")
        seen.add(question_id)
        scores.append(value)
        if question_type:
            for key in _type_keys(str(question_type)):
                groups[key].append(value)
    if not scores:
        raise UserError(f"predictions file {str(path)!r} has no predictions")
    return {
        "accuracy": 100.0 * sum(scores) / len(scores),
        "n": len(scores),
        "by_type": {key: {"accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for key, v in sorted(groups.items())},
    }


def _type_keys(question_type: str) -> list[str]:
    parts = question_type.split("/")
    keys = [question_type]
    if len(parts) > 1:
        for i, part in enumerate(parts):
            keys.append("/".join(part if j == i else "*" for j in range(len(parts))))
    return keys
