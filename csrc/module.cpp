// Entry point of hotpath._C. Kernels register themselves as torch ops (namespace hotpath_cpu)
// from their own source files; this file only lets the library be imported as a Python module.
#include <Python.h>

static struct PyModuleDef hotpath_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&hotpath_c_module); }
