"""The README's demo command reports an exact reparameterization."""
from smpconv_models.demo import main, run_demo


def test_demo_values():
    result = run_demo()
    assert result['reparameterized_max_rel_error'] <= 1e-5
    assert result['reloaded_max_rel_error'] <= 1e-5
    assert 'SMPDepthwiseConv2d' not in result['deploy_modules'] and 'Conv2d' in result['deploy_modules']
    # 13x13 and 11x11 kernels on 16 channels: 42 + 30 points, each 2 coords + 1 radius + 16 weights
    assert result['smp_kernel_params'] == (42 + 30) * 19
    assert result['dense_kernel_params_same_size'] == 16 * (169 + 121)


def test_demo_cli_exit_code(capsys):
    assert main(['--json']) == 0
    assert '"reparameterized_max_rel_error"' in capsys.readouterr().out
