from rlinf_wm.utils.machine import cpu_model, describe_machine, machine_label
from rlinf_wm.utils.precision import native_bfloat16


def test_cpu_model_reads_the_first_model_name_and_falls_back_without_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 9R14"
    fallback = cpu_model(tmp_path / "missing")
    assert fallback and fallback != "AMD EPYC 9R14"


def test_the_description_is_this_machines():
    machine = describe_machine()
    assert machine["native_bfloat16"] == native_bfloat16("cpu")
    assert machine["cpus"] >= 1 and machine["cpu"]
    assert machine["torch"].split("+")[0].count(".") == 2


def test_the_label_names_cpu_cores_bfloat16_amx_and_gpus():
    machine = {"cpu": "Intel Xeon", "cpus": 2, "native_bfloat16": True, "amx": True, "cuda_devices": []}
    assert machine_label(machine) == "Intel Xeon, 2 CPUs, bfloat16 native (AMX)"
    machine.update(native_bfloat16=False, amx=False, cuda_devices=["NVIDIA H100", "NVIDIA H100"])
    assert machine_label(machine) == "Intel Xeon, 2 CPUs, no native bfloat16 (no AMX), 2 GPU(s): NVIDIA H100"
