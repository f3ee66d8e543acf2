"""Built-in detectors for prose: first-, second- and third-person pronouns (and male, female
and neutral ones) and "n't" contractions."""

from __future__ import annotations

import re

from labeller.detect.detector import Detector, regex_detector

VERSION = "builtin-v1"


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)


FIRST = re.compile(r"\bI\b|\b(?i:me|my|mine|myself|we|us|our|ours|ourselves)\b")
SECOND = _words("you", "your", "yours", "yourself", "yourselves", "thou", "thee", "thy")
MALE = _words("he", "him", "his", "himself")
FEMALE = _words("she", "her", "hers", "herself")
NEUTRAL = _words("they", "them", "their", "theirs", "themselves", "themself", "it", "its", "itself")
THIRD = re.compile(f"{MALE.pattern}|{FEMALE.pattern}|{NEUTRAL.pattern}", re.IGNORECASE)
NT = re.compile(r"\b\w+n['’]t\b", re.IGNORECASE)


def _pronoun(name: str, description: str, pattern: re.Pattern[str]) -> Detector:
    return regex_detector(name, description, pattern, f"{VERSION}:{name}")


DETECTORS = [
    _pronoun("first-person", "a first-person pronoun (I, me, my, we, us, our, ...)", FIRST),
    _pronoun("second-person", "a second-person pronoun (you, your, yours, ...)", SECOND),
    _pronoun("third-person", "a third-person pronoun (he, she, it, they and their forms)", THIRD),
    _pronoun("male-pronoun", "a male pronoun (he, him, his, himself)", MALE),
    _pronoun("female-pronoun", "a female pronoun (she, her, hers, herself)", FEMALE),
    _pronoun(
        "neutral-pronoun", "a neutral third-person pronoun (they, them, it, its, ...)", NEUTRAL
    ),
    _pronoun("nt-contraction", "a word with n't (can't, don't, isn't, ...), every token of it", NT),
]
