/*
 * Instruments for bench/breakdown.py (not part of kvm): the cheapest possible compiled KVM_RUN calls,
 * to measure what a Python loop costs around them, with and without handing the GIL over.
 *
 *   floor.run_release_gil(fd)   KVM_RUN with the GIL released, as kvm's Runner does; returns None
 *   floor.run_keep_gil(fd)      KVM_RUN holding the GIL (unsafe for real use: no other thread can run
 *                               Python while the guest runs); returns None
 *
 * Built by breakdown.py with gcc into bench/build/ as a Python extension module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

static int as_fd(PyObject *object) {
    long fd = PyLong_AsLong(object);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)fd;
}

static PyObject *failed(int err) {
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *run_release_gil(PyObject *module, PyObject *fd_object) {
    int fd = as_fd(fd_object);
    if (fd < 0)
        return NULL;
    int result, err;
    Py_BEGIN_ALLOW_THREADS
    result = ioctl(fd, KVM_RUN, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    if (result < 0)
        return failed(err);
    Py_RETURN_NONE;
}

static PyObject *run_keep_gil(PyObject *module, PyObject *fd_object) {
    int fd = as_fd(fd_object);
    if (fd < 0)
        return NULL;
    if (ioctl(fd, KVM_RUN, 0) < 0)
        return failed(errno);
    Py_RETURN_NONE;
}

static PyMethodDef floor_functions[] = {
    {"run_release_gil", run_release_gil, METH_O, "KVM_RUN on the vCPU fd, the GIL released."},
    {"run_keep_gil", run_keep_gil, METH_O, "KVM_RUN on the vCPU fd, holding the GIL."},
    {NULL},
};

static struct PyModuleDef floor_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "floor",
    .m_doc = "Bench instruments: bare KVM_RUN calls (see bench/floor.c).",
    .m_size = -1,
    .m_methods = floor_functions,
};

PyMODINIT_FUNC PyInit_floor(void) {
    return PyModule_Create(&floor_module);
}
