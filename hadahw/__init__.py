"""hadahw: hardware generator, golden model and simulator for HadaNets (arXiv:1905.10759).

Subpackages: :mod:`hadahw.contract` (numeric contract), :mod:`hadahw.golden` (integer model),
:mod:`hadahw.quant` (float HadaNet layers), :mod:`hadahw.rtl` (Amaranth gateware),
:mod:`hadahw.sim` (cocotb testbenches), :mod:`hadahw.sw` (packing, protocol, driver).
"""

__version__ = "0.1.0"
