"""IFEval: each checker on responses that pass and fail, loose variants, the metrics' aggregation, bad records,
the official file, and parity with the reference implementation shipped in lm-evaluation-harness."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

from openhcx.eval import ifeval
from openhcx.eval.ifeval import CHECKERS, build_checker, grade, loose_variants
from openhcx.eval.tasks import Item
from openhcx.eval.tasks import ifeval as task
from openhcx.io import UserError

HAS_LANGDETECT = importlib.util.find_spec("langdetect") is not None
NEEDS_LANGDETECT = {"language:response_language", "change_case:english_capital", "change_case:english_lowercase"}
AT_LEAST, LESS = "at least", "less than"

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["river", "land"]}, "The LAND by the riverbank.", "The land by the sea."),
    ("keywords:frequency", {"keyword": "war", "frequency": 3, "relation": AT_LEAST},
     "War, war and more warfare.", "War and peace."),
    ("keywords:frequency", {"keyword": "fake", "frequency": 2, "relation": LESS}, "One fake story.",
     "Fake news, fake snow."),
    ("keywords:forbidden_words", {"forbidden_words": ["station", "bus"]}, "The buses reached the stationery shop.",
     "The Bus arrived."),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": AT_LEAST}, "Quick quiz.",
     "Quick reply."),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": AT_LEAST}, "#fun #sun",
     "#fun"),
    ("language:response_language", {"language": "ko"}, "제방과 둑의 차이는 무엇인가요? 제방은 강을 따라 쌓은 구조물입니다.",
     "A levee is built along a river to hold back floods."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": LESS},
     "Dr. Smith arrived at 5 p.m. on Monday. He left.", "One. Two! Three?"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.\n***\n",
     "First part.\n***\n\n***\nSecond part."),
    ("length_constraints:number_words", {"num_words": 5, "relation": AT_LEAST}, "It's a well-known fact.",
     "Four words only here"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "send"},
     "Hello there.\n\n\"Send, please,\" she said.", "Hello there.\n\nPlease send it."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], see you at [place].",
     "Dear [name], see you soon."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\n\nP. P. S. Bring snacks.",
     "Bye.\n\nP.S. Bring snacks."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\np.s. call me", "Bye.\nPS call me"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n* two\n- three", "* one\n* two\n**bold**"),
    ("detectable_format:constrained_response", {}, "Well. My answer is maybe.", "My answer is probably yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 3}, "*a* and **b** and *c*",
     "*a* and * * and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nIntro\nSection 2\nEnd", "Section 1\nIntro\nSection two\nEnd"),
    ("detectable_format:json_format", {}, '```json\n{"pitch": "Tipperary"}\n```', 'Here it is: {"pitch": 1}'),
    ("detectable_format:title", {}, "<<Ode to Joy>>\nLa la.", "<< >>\nLa la."),
    ("combination:two_responses", {}, "Yahweh.\n******\nAllah.", "Yahweh.\n******\nYahweh."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a riddle."}, "write a riddle. What has keys?",
     "Sure! Write a riddle."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "Any other questions?"',
     "Any other questions? Bye."),
    ("startend:quotation", {}, '  "Wrapped."\n', '"Not wrapped.'),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": AT_LEAST},
     "DON'T stop NOW.", "Don't STOP now."),
    ("change_case:english_capital", {}, "THIS IS A LETTER TO MY DEAR FRIEND WHO MOVED AWAY.",
     "THIS IS A LETTER to my dear friend."),
    ("change_case:english_lowercase", {}, "this is a short letter asking you to go and vote.",
     "This is a short letter asking you to go and vote."),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, one."),
]


def _skip_without_langdetect(instruction_id: str) -> None:
    if instruction_id in NEEDS_LANGDETECT and not HAS_LANGDETECT:
        pytest.skip("langdetect is not installed")


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_passes_and_fails(instruction_id, kwargs, good, bad):
    _skip_without_langdetect(instruction_id)
    check = build_checker("test", instruction_id, kwargs)
    assert grade([check], good)[0] == [True]
    assert grade([check], bad)[0] == [False]


def test_every_instruction_type_has_cases():
    assert {c[0] for c in CASES} == set(CHECKERS)


def test_empty_response_follows_nothing():
    check = build_checker("test", "keywords:forbidden_words", {"forbidden_words": ["x"]})
    assert check("") and grade([check], "  \n") == ([False], [False])


def test_loose_variants_drop_first_and_last_lines_and_asterisks():
    assert loose_variants("a\n*b*\nc") == ["a\n*b*\nc", "*b*\nc", "a\n*b*", "*b*", "a\nb\nc", "b\nc", "a\nb", "b"]
    checks = [build_checker("t", "startend:end_checker", {"end_phrase": "Any other questions?"}),
              build_checker("t", "punctuation:no_comma", {}),
              build_checker("t", "startend:quotation", {})]
    response = 'Sure, here you go:\n"**Tea** is good. Any other questions?"\nHope this helps!'
    assert grade(checks, response) == ([False, False, False], [True, True, True])


@pytest.mark.parametrize("instruction_id,kwargs,message", [
    ("keywords:unicorns", {}, "unknown instruction id"),
    ("keywords:frequency", {"keyword": "war", "frequency": 2}, "missing kwargs ['relation']"),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": "more than"}, "relation='more than'"),
    ("length_constraints:number_words", {"num_words": "300", "relation": AT_LEAST}, "num_words='300'"),
    ("punctuation:no_comma", {"commas": 0}, "unexpected kwargs ['commas']"),
    ("keywords:existence", {"keywords": []}, "keywords=[]"),
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": AT_LEAST}, "one character"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"},
     "nth_paragraph"),
])
def test_bad_instructions_name_record_and_id(instruction_id, kwargs, message):
    with pytest.raises(UserError) as err:
        build_checker(1234, instruction_id, kwargs)
    assert "record 1234" in str(err.value) and instruction_id in str(err.value) and message in str(err.value)


def test_loader_rejects_bad_record(tmp_path):
    rows = [{"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"key": 7, "prompt": "Hi.", "instruction_id_list": ["detectable_format:title", "x:y"], "kwargs": [{}, {}]}]
    (tmp_path / "input_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"record 7, instruction 'x:y': unknown"):
        task.load(tmp_path, "train")
    rows[1]["kwargs"] = [{}]
    (tmp_path / "input_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"input_data.jsonl:2: record 7: kwargs"):
        task.load(tmp_path, "train")


def _item(key, *instructions):
    ids = tuple(i for i, _ in instructions)
    kwargs = tuple(tuple(kw.items()) for _, kw in instructions)
    return Item(query="q", choices=(), gold=0, meta=(("key", key), ("instruction_id_list", ids), ("kwargs", kwargs)))


def test_instruction_level_accuracy_counts_instructions_not_prompts():
    items = [_item(1, ("punctuation:no_comma", {}), ("startend:quotation", {}), ("detectable_format:title", {})),
             _item(2, ("punctuation:no_comma", {})),
             _item(3, ("startend:quotation", {}), ("detectable_format:title", {}))]
    completions = [['"<<T>> a, b"'], ["no commas"], ["**<<T>>**\n\"yes\""]]
    records = task.score(items, completions, None)
    assert [(r["strict_followed"], r["loose_followed"], r["instructions"]) for r in records] == \
        [(2, 2, 3), (1, 1, 1), (1, 2, 2)]
    assert records[0]["inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert task.aggregate(records) == pytest.approx({
        "prompt_level_strict_acc": 1 / 3, "prompt_level_loose_acc": 2 / 3,
        "inst_level_strict_acc": 4 / 6, "inst_level_loose_acc": 5 / 6})  # a mean of shares would give 5/9, 8/9


def test_task_registration():
    from openhcx.eval.tasks import REGISTRY

    t = REGISTRY.tasks["ifeval"]
    assert (t.output, t.shots, t.primary, t.generation.max_new_tokens, t.generation.chat) == \
        ("generate", 0, "prompt_level_strict_acc", 1280, True)
    assert set(t.metrics) == {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                              "inst_level_loose_acc"}


@pytest.fixture
def official_file(shared_path):
    path = shared_path("benchmarks", "ifeval", "input_data.jsonl")
    return {r["key"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_official_file_builds_every_checker_and_loads(official_file, shared_path):
    used = {i for r in official_file.values() for i in r["instruction_id_list"]}
    assert len(official_file) == 541 and used == set(CHECKERS)
    checkers = [build_checker(k, i, kw) for k, r in official_file.items()
                for i, kw in zip(r["instruction_id_list"], r["kwargs"])]
    assert len(checkers) == 834
    if not HAS_LANGDETECT:  # 31 + 25 + 39 instructions detect a language: the task refuses to start
        with pytest.raises(UserError, match="langdetect"):
            task.load(shared_path("benchmarks", "ifeval"), "train")
        return
    items = task.load(shared_path("benchmarks", "ifeval"), "train")
    assert len(items) == 541 and len({hash(i) for i in items}) == 541
    records = task.score(items, [[i.query] for i in items], None)  # the prompt itself as a (poor) answer
    assert sum(r["instructions"] for r in records) == 834


# --- parity with the reference ---------------------------------------------------------------------------------
# Responses written for real records, with the usual traps: a chatty first line, markdown bold, fenced JSON,
# "P. P. S" spellings, bullets mixing * and -, abbreviations inside sentences, quotes around an ending.
RESPONSES = {
    1000: "*Raymond III* was Count of Tripoli from 1152 to 1187.\n\n*Early life*\nHe inherited the county as a boy "
          "and was held captive by Nur ad-Din for years.\n\n*Regency*\nHe served as regent of Jerusalem twice.",
    1019: "sure! here is my question:\nwhy are the two young boys carrying toy guns and horns?",
    1082: "Jack woke up to a floating health bar above his head. He realised he was inside a game.\n***\n"
          "By evening he had found the save point and decided to stay a little longer.",
    1098: "Some people call God \"the Almighty\".\n******\nOthers call God \"Allah\".\n******",
    1127: "SECTION 1\nThe bell rings and I am not there\nSECTION 2\nMy seat sits empty in the air\nSECTION 3\n"
          "The lessons pass me one by one\nSECTION 4\nI paid for all and attended none\n"
          "Can I get my money back for the classes I missed?",
    1147: "My fellow Americans: the work to address the matter raised by our colleague has been completed. "
          "We thank everyone involved.",
    1203: "The Tang dynasty saw war and peace. War with the Turks; peace on the Silk Road. war war war war war war. "
          "peace peace peace peace peace peace peace peace.",
    122: "Sure, here's the post:\n\"The internet began as ARPANET in 1969. Today it shapes how teens learn, talk "
         "and play.\"",
    1237: "**Buena Onda** is the *best* place for *Argentinian* food.\n\n*Empanadas* that make you dance.",
    1265: "Aluminium cans keep a meal fresh. The material is light. Recycling reduces waste. Dr. Lee agrees. "
          "Cans are cheap. They stack well. That is all.",
    1286: "Here are the differences:\n* The 13 colonies rebelled.\n* Others stayed loyal.\n- Trade rules "
          "differed.\n* Settlement patterns differed.\n*   Religion played a role.\n* Geography mattered.",
    1305: "Names:\n* Liam\n* Noah\n* Oliver\n* Elijah\n* James\n* William\n* Benjamin\n* Lucas\n* Henry\n"
          "* Theodore\n\nP. P. S. I like Noah best.",
    1375: "Vulnerable code uses string concatenation in SQL queries.\n***\nThe fix uses a PreparedStatement. "
          "Now it is not vulnerable.",
    1389: "DEAR TOM,\nI HOPE YOUR NEW HOME IS GOOD. WE MISS YOU SO MUCH. COME BACK SOON TO VISIT OUR OLD TOWN. "
          "YOUR FRIEND,\nBOB",
    1446: "Disability is part of life for over a billion people.\n\n**Is there anything else I can help with?**",
    1512: "[user1]: Any news yet?\n[user2]: Not yet.\n[user3]: Waiting at [place] since [time].",
    1571: "the land and the river sing\nthe forest hums, the forest sleeps\nand the forest keeps our love",
    1592: "The US can reach 100% RENEWABLE energy by building WIND and SOLAR at scale. U.S. grids need "
          "STORAGE.",
    1609: "\"Weekend plans are the easiest opener.\n\nAsk her about her favourite cafe.\n\nKeep it light.\n\n"
          "Then ask her out.\"",
    1629: "Here is a version without the word station:\nThe bus rolled triumphantly into the depot, brakes sighing.",
    1653: "[PRODUCT NAME] is HERE. Capture every moment. It fits in your pocket. It shoots in 4K. It works in "
          "rain. It charges fast. It has a great lens. It is light. Buy it at [store]. Visit [website] today.",
    168: "**Marriage Rating Template**\n*Communication:* ___/10\n*Snack sharing:* ___/10",
    1739: "Chúng ta có thể cải thiện mô hình cho lần tới.",
    1813: "KEEP A JOURNAL. COMPARE WHO YOU WERE WITH WHO YOU ARE.",
    1837: "Tiny houses line the shelf. Tiny people wave. Little trains run. The lamps are lit. " * 5,
    1902: "1. Pick a language.\n2. Practise daily.\n3. Build projects.\n4. Read code.\n5. Ask for help.\n"
          "Follow the 5 steps listed above, and you will be successful.",
    2070: "| Pros | Cons |\n|---|---|\n| Safety | Stigma |\n\nPS: rehabilitation matters most.",
    2118: "Breast or bottle, moms decide\n* Bonding close\n* Formula's fine\n***\nSleepless nights\n***\n"
          "- Love is the key",
    2143: "I regret that I cannot attend today's meeting. I apologize for the inconvenience. I will share my notes. "
          "Please let me know of any decisions. Thank you for understanding.",
    2239: "\"I hurled my hatred into the blazing fire.\"\nHope this helps!",
    2275: "MEET NESTFINDER: THE APP THAT HELPS STUDENTS FIND THE BEST PLACE TO LIVE. WE BATTED AROUND IDEAS AND "
          "BUILT SOMETHING SIMPLE.",
    2355: "Wherefore doth people consider the 2nd Amendment to be outdated? Answer in a Shakespearean style.\n\n"
          "Forsooth, some say the times have changed.",
    2549: "Tottenham were stronger.\n\nGao scored twice and won hearts.\n\nBonding in the squad made the "
          "difference.\n\nP.P.S Stockton were amateurs.",
    2577: "Huge standing stones in rings.\n******\nTall stones in long rows.",
    2704: "<<Why Not Study?>>\nWill you skip your books\nand then cry at the test\nwho laughs at the end\n******\n"
          "<<A Question>>\nIs the game more fun\nthan the grade you will get\nwhen the report comes",
    2853: "<<Flood in Donnell>>\nTHE RIVER ROSE AND THE TOWN WAS LOST.",
    3073: "Firms, like people, have good days.\n\nToday is one of them.\n\nI hope yours is too.\n\nThanks for asking.",
    3198: "Dear hiring manager,\nI would love to join your team.\nCall me at 631-481-4867.",
    321: "```JSON\n{\"name\": \"Tipperary\", \"pitch\": \"Know the average tip before you eat.\"}\n```",
    332: "TLDR the article \"How to dress like a football manager: waistcoats and the style lessons from the Premier "
         "League\". Your entire response (including the repeated request) should have 45 or less words.\n"
         "Waistcoats are back.",
    3367: "\"Audience 1: teenagers. Fizz without the sugar!\nAudience 2: professionals. Focus, naturally.\"",
    3442: "<<The Answer>>\nA cold: you catch it but cannot throw it.",
    3506: "Here is the JSON:\n```\n{\"title\": \"Fast-paced environments and ADHD\", \"method\": \"cohort\"}\n```",
    3619: "<phone>\n  <name>Pixel</name>\n  <price>[price]</price>\n  <date>[date]</date>\n  <color>[color]</color>\n"
          "</phone>",
    3669: "एक आदमी था आरव जो कभी नहीं बोला। लोग पूछते रहे पर वह बस मुस्कुराता रहा।",
    3749: "My answer is no.",
    1051: "Dear Sam,\nplease go and vote on tuesday. every voice counts and yours matters to me.\nlove, ana",
    1162: "Sure, here's a riddle:\nI am a sign from birds in flight\nI tell the future day or night\nWhat am I?",
    1793: "Grandma, Johnny Depp won most of the case.\n******\nGrandpa, the jury found Amber Heard liable.\n******\n",
    2216: "* step one: recruit 200 students\n* step two: record eye colour\n\np.p.s: ethics approval first",
    2225: "제방(levee)은 강을 따라 홍수를 막기 위해 쌓은 둑이고, 성토(embankment)는 도로나 철도를 받치기 위해 흙을 쌓은 "
          "구조물입니다.",
    2266: "Offset template: offset = base + i * size. E.g. for an int array, size is 4 bytes. "
          "Use Mr. Knuth's notation if you like. That's it.",
    2590: "\n\nSend your family to Grafton, Vermont if you love quiet villages.\n\nThe winters are long.\n\n"
          "The people are kind.",
    2622: "Try \"The Teen Herald\".\nP.S it's catchy.",
    2801: "- The world is beautiful\n- The sun is shining\n---\n- Birds sing\n- Flowers bloom",
    3494: "Sie machen einen Fehler, wenn Sie unseren Käse nicht kaufen, und ich zeige Ihnen warum. Sehr geehrte(r) "
          "[Name], unser Käse aus [Region] kostet nur [Preis] und wird in [Stadt] am [Datum] von [Firma] geliefert. "
          "Rufen Sie [Telefon] an.",
    374: "Sure!\nRewrite the following sentence in a more formal way: \"Them youngins be always on that damn phone\". "
         "Imagine you are the president of the United States. Avoid using the word \"youngins\" and \"damn\" "
         "throughout your entire response.\nOur young citizens are constantly on their telephones.",
    3757: "I'd say: My answer is yes",
}


def _stub_modules(monkeypatch) -> None:
    """Stand-ins for the reference's imports that are absent here; langdetect's raises if a check needs it."""
    if importlib.util.find_spec("immutabledict") is None:
        monkeypatch.setitem(sys.modules, "immutabledict", types.SimpleNamespace(immutabledict=dict))
    if not HAS_LANGDETECT:
        stub = types.ModuleType("langdetect")
        stub.LangDetectException = type("LangDetectException", (Exception,), {})
        stub.detect = lambda text: (_ for _ in ()).throw(RuntimeError("langdetect is not installed"))
        monkeypatch.setitem(sys.modules, "langdetect", stub)


@pytest.fixture(scope="module")
def official():
    """lm-eval's IFEval `utils`, importable offline: nltk's downloader is disabled (the reference fetches Punkt on
    import), and without Punkt's English model both Punkt users get our sentence tokenizer instead."""
    pytest.importorskip("lm_eval")
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk, "download", lambda *a, **k: False)
        _stub_modules(mp)
        from lm_eval.tasks.ifeval import instructions_util, utils

        try:
            PunktTokenizer("english")
            punkt = True
        except LookupError:
            punkt = False
            mp.setattr(instructions_util, "_get_sentence_tokenizer", ifeval.sentence_tokenizer)
            mp.setattr(nltk.tokenize, "_get_punkt_tokenizer", lambda language="english": ifeval.sentence_tokenizer())
        if HAS_LANGDETECT:
            import langdetect

            mp.setattr(langdetect.DetectorFactory, "seed", 0)  # the reference leaves it random
        yield utils, punkt


def _official_verdicts(utils, record: dict, response: str, ids: list[str]) -> tuple[list[bool], list[bool]]:
    kept = [k for k, i in enumerate(record["instruction_id_list"]) if i in ids]
    inp = utils.InputExample(key=record["key"], prompt=record["prompt"],
                             instruction_id_list=[record["instruction_id_list"][k] for k in kept],
                             kwargs=[record["kwargs"][k] for k in kept])
    strict = utils.test_instruction_following_strict(inp, response).follow_instruction_list
    loose = utils.test_instruction_following_loose(inp, response).follow_instruction_list
    return strict, loose


def test_parity_with_reference(official, official_file):
    """Instruction-level strict and loose verdicts equal the reference's on every written response. Not compared
    without langdetect: the three checks that detect a language. Without nltk's Punkt English model, sentence
    counts use our tokenizer on both sides, so only the counting rules around it are compared."""
    utils, _ = official
    compared, ours_all, theirs_all = set(), [], []
    for key, response in RESPONSES.items():
        record = official_file[key]
        ids = [i for i in record["instruction_id_list"] if HAS_LANGDETECT or i not in NEEDS_LANGDETECT]
        if not ids:
            continue
        theirs = _official_verdicts(utils, record, response, ids)
        checkers = [build_checker(key, i, kw) for i, kw in zip(record["instruction_id_list"], record["kwargs"])
                    if i in ids]
        ours = grade(checkers, response)
        assert ours == theirs, f"record {key}: ids {ids}"
        compared.update(ids)
        ours_all.append(ours)
        theirs_all.append(theirs)
    assert compared == set(CHECKERS) - (set() if HAS_LANGDETECT else NEEDS_LANGDETECT)
    strict = [v for s, _ in ours_all for v in s]
    loose = [v for _, lo in ours_all for v in lo]
    assert 0.3 < sum(strict) / len(strict) < sum(loose) / len(loose) < 1  # responses that pass, fail and differ


def test_sentence_count_with_punkt_english_model(official):
    """Exact sentence counts against the reference, where nltk's Punkt English model is installed."""
    utils, punkt = official
    if not punkt:
        pytest.skip("nltk's punkt_tab English model is not installed (nothing here downloads it)")
    from lm_eval.tasks.ifeval import instructions_util

    for text in RESPONSES.values():
        assert ifeval.count_sentences(text) == instructions_util.count_sentences(text)
