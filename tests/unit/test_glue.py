"""GLUE readers: tiny files in the official download's layouts (headerless CoLA, QUOTE_NONE
rows with stray quotes, MNLI's matched/mismatched files, unlabelled test files), a saved
`datasets` DatasetDict, the one-line errors, and the submission files."""

import os

import numpy as np
import pytest

from flax_bert.errors import UserError
from flax_bert.tasks import labelled_text as labelled
from flax_bert.tasks.glue import data as glue
from tests.finetune_fixtures import write_vocab

MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")
STSB_HEAD = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
MRPC_HEAD = "#1 ID\t#2 ID\t#1 String\t#2 String"
FILES = {
    "CoLA/train.tsv": "gj04\t1\t\tOur friends won't buy this analysis.\n"
                      "gj04\t0\t*\tThey drank the pub.\n",
    "CoLA/dev.tsv": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
    "CoLA/test.tsv": "index\tsentence\n0\tBill whistled past the house.\n"
                     "1\tThe car honked its way down the road.\n",
    "SST-2/train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\n"
                       "that loves its characters \t1\n",
    "SST-2/test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    "MRPC/train.tsv": f"\ufeffQuality\t{MRPC_HEAD}\n"
                      "1\t702876\t702977\tAmrozi accused his brother.\tHe called him a liar.\n"
                      "0\t2108705\t2108831\tYucaipa owned Dominick 's.\tYucaipa bought it.\n",
    "MRPC/test.tsv": f"index\t{MRPC_HEAD}\n0\t1089874\t1089925\tPCCW 's chief.\tCurrent chief.\n",
    "STS-B/train.tsv": f"{STSB_HEAD}\tscore\n"
                       "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking "
                       "off.\tAn air plane is taking off.\t5.000\n"
                       "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing "
                       "a flute.\tA man is playing a bamboo flute.\t3.800\n",
    "STS-B/test.tsv": f"{STSB_HEAD}\n0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\t"
                      "A girl is styling her hair.\tA girl is brushing her hair.\n",
    # A question broken over two lines (a malformed row, skipped) and quotes that are text.
    "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                     "133273\t213221\t213222\tHow is \"life\" of a math student?\tWhy?\t0\n"
                     "402555\t536040\t536041\tHow do I learn to cook?\n"
                     "How can I learn cooking?\t1\n"
                     "360472\t364011\t490273\tWhat does \"Bluetooth\" mean?\t"
                     "What is \"Bluetooth?\t1\n",
    "QQP/test.tsv": "id\tquestion1\tquestion2\n0\tWhy do rockets look white?\t\"Why are rockets "
                    "white?\n",
    "MNLI/train.tsv": f"{MNLI_HEAD}\tlabel1\tgold_label\n"
                      "0\t31193\t31193n\tgovernment\t( ( b\t( c\t(ROOT b)\t(ROOT c)\tConceptually "
                      "\"cream skimming has two dimensions.\tProduct and geography.\tneutral\t"
                      "neutral\n"
                      "1\t101457\t101457e\ttelephone\t( y\t( z\t(ROOT y)\t(ROOT z)\tyou know "
                      "during the season\tYou lose the things.\tentailment\tentailment\n",
    "MNLI/dev_matched.tsv": f"{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
                            "0\t63735\t63735n\tslate\t( a\t( b\t(ROOT a)\t(ROOT b)\tThe new "
                            "rights are nice enough\tEveryone really likes the newest benefits"
                            " \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
    "MNLI/dev_mismatched.tsv": f"{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\t"
                               "gold_label\n0\t75290\t75290c\tletters\t( a\t( b\t(ROOT a)\t"
                               "(ROOT b)\tYour contribution helped.\tYour contribution did "
                               "not help.\tcontradiction\tcontradiction\tcontradiction\t"
                               "contradiction\tcontradiction\tcontradiction\n",
    "MNLI/test_matched.tsv": f"{MNLI_HEAD}\n0\t31493\t31493\ttravel\t( a\t( b\t(ROOT a)\t"
                             "(ROOT b)\tHierbas, \"ans seco.\tHierbas is a name.\n",
    "MNLI/test_mismatched.tsv": f"{MNLI_HEAD}\n0\t16130\t16130\tfacetoface\t( a\t( b\t(ROOT a)\t"
                                "(ROOT b)\tWhat have you decided?\tWhat are you going to do?\n",
    "QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series "
                      "begin?\tUnlike the two seasons before it.\tnot_entailment\n",
    "QNLI/test.tsv": "index\tquestion\tsentence\n0\tWhat organization is devoted to Jihad?\t"
                     "For some decades prior.\n",
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction "
                     "Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t"
                     "not_entailment\n1\tA place of sorrow.\tPope buried.\tentailment\n",
    "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tMaude Orchard.\tMaude was born.\n"
                    "1\tMilitary ships.\tShips sank.\n",
    "WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot."
                      "\tThe carrot had a hole.\t1\n1\tJohn could not see.\tJohn was short.\t0\n",
    "WNLI/test.tsv": "index\tsentence1\tsentence2\n0\tMaude and Dora.\tHorses were there.\n",
    "diagnostic/diagnostic.tsv": "index\tsentence1\tsentence2\n0\tThe cat sat.\tThe cat did not "
                                 "sit.\n",
}


@pytest.fixture
def glue_dir(tmp_path):
    for name, text in FILES.items():
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path)


def test_task_table():
    assert glue.GLUE_TASKS == ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE",
                               "WNLI")
    mnli = glue.get_task("mnli")
    assert mnli.labels == ("entailment", "neutral", "contradiction")  # HF glue's ClassLabel
    assert mnli.splits == ("train", "dev_matched", "dev_mismatched", "test_matched",
                           "test_mismatched")
    assert list(mnli.evals.values()) == ["MNLI-m", "MNLI-mm"]
    assert glue.get_task("sts-b") is glue.get_task("stsb") is glue.TASKS["STS-B"]
    assert glue.TASKS["STS-B"].is_regression and not glue.TASKS["QQP"].is_regression
    assert sorted(f for t in glue.TASKS.values() for f in t.tests.values()) == sorted(
        ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
         "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"])
    with pytest.raises(UserError, match="'squad' is unknown"):
        glue.get_task("squad")


def test_read_every_task(glue_dir):
    cola = glue.read_split(glue_dir, "CoLA", "train")  # headerless
    assert cola.texts == ["Our friends won't buy this analysis.", "They drank the pub."]
    assert cola.pairs is None and cola.label.tolist() == [1, 0] and cola.ids == ["0", "1"]
    test = glue.read_split(glue_dir, "CoLA", "test")  # a header, no labels
    assert test.label is None and test.ids == ["0", "1"] and test.texts[1].startswith("The car")
    sst = glue.read_split(glue_dir, "SST-2", "train")
    assert sst.texts[1] == "that loves its characters " and sst.label.tolist() == [0, 1]
    mrpc = glue.read_split(glue_dir, "MRPC", "train")  # its header starts with a BOM
    assert mrpc.pairs == ["He called him a liar.", "Yucaipa bought it."]
    assert mrpc.label.tolist() == [1, 0]
    assert glue.read_split(glue_dir, "MRPC", "test").ids == ["0"]
    stsb = glue.read_split(glue_dir, "STS-B", "train")
    assert stsb.label.dtype == np.float32 and stsb.label.tolist() == pytest.approx([5.0, 3.8])
    assert stsb.texts[1] == "A man is playing a flute."
    assert glue.read_split(glue_dir, "STS-B", "test").pairs == ["A girl is brushing her hair."]
    qqp = glue.read_split(glue_dir, "QQP", "train")  # quotes are text; broken rows skipped
    assert qqp.texts == ['How is "life" of a math student?', 'What does "Bluetooth" mean?']
    assert qqp.pairs == ["Why?", 'What is "Bluetooth?'] and qqp.label.tolist() == [0, 1]
    assert qqp.skipped == 2 and qqp.ids == ["133273", "360472"]
    assert glue.read_split(glue_dir, "QQP", "test").pairs == ['"Why are rockets white?']
    mnli = glue.read_split(glue_dir, "MNLI", "train")
    assert mnli.texts[0] == 'Conceptually "cream skimming has two dimensions.'
    assert mnli.label.tolist() == [1, 0]  # neutral, entailment
    assert glue.read_split(glue_dir, "MNLI", "dev_matched").label.tolist() == [1]
    assert glue.read_split(glue_dir, "MNLI", "dev_mismatched").label.tolist() == [2]
    assert glue.read_split(glue_dir, "MNLI", "test_matched").texts == ['Hierbas, "ans seco.']
    assert glue.read_split(glue_dir, "MNLI", "test_mismatched").label is None
    assert glue.read_split(glue_dir, "QNLI", "train").label.tolist() == [1]
    assert glue.read_split(glue_dir, "QNLI", "test").pairs == ["For some decades prior."]
    assert glue.read_split(glue_dir, "RTE", "train").label.tolist() == [1, 0]
    assert glue.read_split(glue_dir, "WNLI", "train").label.tolist() == [1, 0]  # 1 = entailment
    assert glue.TASKS["WNLI"].labels[1] == "entailment"
    ax = glue.read_split(glue_dir, "AX", "test")
    assert ax.texts == ["The cat sat."] and ax.pairs == ["The cat did not sit."]


def _one_line_error(match, fn, *args):
    with pytest.raises(UserError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_user_errors(glue_dir, tmp_path):
    os.makedirs(tmp_path / "other")
    _one_line_error("no folder 'RTE'.*download", glue.read_split, str(tmp_path / "other"), "RTE",
                    "train")
    _one_line_error("no such folder", glue.read_split, str(tmp_path / "nowhere"), "RTE", "train")
    _one_line_error("RTE/dev.tsv: no such file", glue.read_split, glue_dir, "RTE", "dev")
    _one_line_error("no split 'dev'.*dev_matched", glue.read_split, glue_dir, "MNLI", "dev")
    path = os.path.join(glue_dir, "RTE", "train.tsv")
    with open(path, "w") as f:
        f.write("index\tsentence1\tsentence2\tgold\n0\ta\tb\tentailment\n")
    _one_line_error("last column of the header is 'gold', RTE needs 'label'", glue.read_split,
                    glue_dir, "RTE", "train")
    with open(path, "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tneutral\n")
    _one_line_error(r"train.tsv:3: label 'neutral' is not one of RTE's", glue.read_split,
                    glue_dir, "RTE", "train")
    with open(path, "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n0\ta\tentailment\n")
    _one_line_error(r"train.tsv:2: 3 tab-separated fields", glue.read_split, glue_dir, "RTE",
                    "train")
    with open(path, "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
    _one_line_error("no examples", glue.read_split, glue_dir, "RTE", "train")
    stsb = os.path.join(glue_dir, "STS-B", "train.tsv")
    with open(stsb, "a") as f:
        f.write("2\tg\tf\ty\to\tn\tn\ta\tb\t7.5\n")
    _one_line_error("score '7.5' is not a number in 0.0-5.0", glue.read_split, glue_dir,
                    "STS-B", "train")


def test_read_saved_datasets(glue_dir, tmp_path):
    import datasets

    labels = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
    features = datasets.Features({"premise": datasets.Value("string"),
                                  "hypothesis": datasets.Value("string"), "label": labels,
                                  "idx": datasets.Value("int32")})

    def split(premises, label):
        return datasets.Dataset.from_dict(
            {"premise": premises, "hypothesis": [p + "?" for p in premises],
             "label": [label] * len(premises), "idx": list(range(len(premises)))}, features)

    folder = str(tmp_path / "mnli")
    datasets.DatasetDict({"train": split(["a", "b"], 1), "validation_matched": split(["c"], 0),
                          "validation_mismatched": split(["d"], 2),
                          "test_matched": split(["e"], -1), "test_mismatched": split(["f"], -1)}
                         ).save_to_disk(folder)
    train = glue.read_split(folder, "MNLI", "train")
    assert train.texts == ["a", "b"] and train.pairs == ["a?", "b?"] and train.ids == ["0", "1"]
    assert train.label.tolist() == [1, 1]
    assert glue.read_split(glue_dir, "MNLI", "train").label[0] == 1  # "neutral" in the TSV
    assert glue.read_split(folder, "MNLI", "dev_mismatched").label.tolist() == [2]
    test = glue.read_split(folder, "MNLI", "test_matched")
    assert test.label is None and test.texts == ["e"]
    _one_line_error("no split 'validation'", glue.read_split, folder, "RTE", "dev")
    _one_line_error("no column 'sentence1'", glue.read_split, folder, "RTE", "train")

    other = str(tmp_path / "renamed")
    renamed = datasets.Features({**features, "label": datasets.ClassLabel(names=["x", "y", "z"])})
    datasets.DatasetDict({"train": split(["a"], 0).cast(renamed)}).save_to_disk(other)
    _one_line_error(r"label names \['x', 'y', 'z'\] are not MNLI's", glue.read_split, other,
                    "MNLI", "train")


def test_encode_and_submission(glue_dir, tmp_path):
    vocab = write_vocab(str(tmp_path / "vocab.txt"), ("a", "b", "c"))
    rte = glue.read_split(glue_dir, "RTE", "train")
    arrays = glue.encode(rte, labelled.make_tokenizer(vocab, True, 12))
    assert arrays["input_ids"].shape == (2, 12) and arrays["label"].tolist() == [1, 0]
    assert arrays["token_type_ids"].max() == 1  # pairs

    out = str(tmp_path / "submission")
    test = glue.read_split(glue_dir, "RTE", "test")
    path = glue.write_submission(out, test, np.array([1, 0]))
    assert path.endswith("RTE.tsv")
    assert open(path).read() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    cola = glue.write_submission(out, glue.read_split(glue_dir, "CoLA", "test"), np.array([0, 1]))
    assert open(cola).read() == "index\tprediction\n0\t0\n1\t1\n"
    stsb = glue.write_submission(out, glue.read_split(glue_dir, "STS-B", "test"), np.array([5.4]))
    assert open(stsb).read() == "index\tprediction\n0\t5.000\n"
    mm = glue.write_submission(out, glue.read_split(glue_dir, "MNLI", "test_mismatched"), [2])
    assert os.path.basename(mm) == "MNLI-mm.tsv" and open(mm).read().endswith("0\tcontradiction\n")
    _one_line_error("not a test split", glue.write_submission, out, rte, np.array([0, 0]))
