"""GET /ipadapter_dca/adapter: what a file in models/ipadapter is and its reference weight, read from the content
(the route web/reference_weight.js asks when a new Apply node is connected). The browser side is in test_frontend.py
and, against the real server, in integration/test_frontend_real.py."""

import asyncio
import json
import os
import shutil

import pytest
from reference_weight_files import BROKEN, write_family_files
from standin_host import folder_paths, pack_module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipadapter_weights")
    expected = write_family_files(folder)
    shutil.copy(folder / "sd35_large.bin", folder / "renamed_ip-adapter_sd15.bin")  # content decides, not the name
    expected["renamed_ip-adapter_sd15.bin"] = 0.5
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    yield expected
    folder_paths.folder_names_and_paths["ipadapter"][0].remove(str(folder))


def ask(query):
    from aiohttp.test_utils import make_mocked_request

    response = asyncio.run(pack_module("nodes.routes").adapter(make_mocked_request("GET", "/ipadapter_dca/adapter" + query)))
    return response.status, json.loads(response.body)


def test_each_file_reports_its_reference_weight_and_what_it_is(files):
    labels = {"sd15_base.safetensors": "SD1.5 IP-Adapter", "xlabs_v1.safetensors": "Flux.1 XLabs",
              "flux_instantx.bin": "Flux.1 InstantX", "sd35_large.bin": "SD3.5-Large InstantX",
              "renamed_ip-adapter_sd15.bin": "SD3.5-Large InstantX"}
    for name, weight in files.items():
        status, answer = ask(f"?file={name}")
        assert status == 200, answer
        assert answer["file"] == name and answer["weight"] == weight
        assert answer["label"].startswith(labels[name])


def test_faceid_takes_the_authors_weight():
    from synthetic_faceid import make_faceid_checkpoint

    adapter = pack_module("ipadapter_core").adapter_from_state_dict(make_faceid_checkpoint("sd15_faceid_plus"), "f.bin")
    assert adapter.spec.reference_weight == 1.0


def test_a_file_that_is_not_there_or_not_an_adapter_is_answered_with_the_reason(files):
    assert ask("?file=missing.bin") == (404, {"error": "no file 'missing.bin' in models/ipadapter"})
    assert ask("") == (404, {"error": "no file '' in models/ipadapter"})
    outside = f"../{os.path.basename(os.path.dirname(folder_paths.get_full_path('ipadapter', BROKEN)))}/{BROKEN}"
    assert ask(f"?file={outside}")[0] == 404  # a name is looked up inside the models folders only
    status, answer = ask(f"?file={BROKEN}")
    assert status == 400 and answer["error"].startswith(f"IP-Adapter file '{BROKEN}' is not a readable .safetensors")


def test_an_answer_is_read_again_when_the_file_changes(files, tmp_path):
    from reference_weight_files import write_family_files as write

    write(tmp_path)
    folder_paths.add_model_folder_path("ipadapter", str(tmp_path), is_default=True)
    try:
        assert ask("?file=sd35_large.bin")[1]["weight"] == 0.5
        shutil.copy(tmp_path / "flux_instantx.bin", tmp_path / "sd35_large.bin")
        os.utime(tmp_path / "sd35_large.bin", (1, 1))  # a different modification time
        assert ask("?file=sd35_large.bin")[1]["weight"] == 0.7
    finally:
        folder_paths.folder_names_and_paths["ipadapter"][0].remove(str(tmp_path))
