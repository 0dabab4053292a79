/*
 * kvm._speedups: the compiled fast path of the vCPU run loop (optional; kvm/_pure.py is the
 * pure-Python equivalent with the same interface, used where this module could not be built).
 *
 * After every exit to user space the CPU's predictors and caches are cold, so every interpreted
 * instruction between two KVM_RUNs costs several times its usual price (bench/README.md, "Where the
 * time goes"). This module keeps that path short: `Runner` issues KVM_RUN and hands back the exit
 * object of the reason (one per reason, reused), `VcpuBase.run` is how `vcpu.run()` reaches it,
 * `ExitBase` is the C base of every exit class, which decodes the exit's integer payload into
 * read-only members as run() returns, and `Field` reads one payload field straight out of kvm_run.
 *
 * No layout is known here: every offset and width comes from the binding in use (kvm/exits.py
 * computes them with the binding's cffi FFI).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Bumped in the child after fork(): a Runner made before the fork refuses to run in the child. */
static unsigned long fork_generation;

/* The calling thread's kernel id, 0 until first needed (gettid is a system call). */
static __thread pid_t thread_tid;

static void after_fork_in_child(void) {
    fork_generation++;
    thread_tid = 0;  /* the child's only thread is this one, under a new id */
}

/* A native-endian unsigned integer of 1, 2, 4 or 8 bytes at p. */
static uint64_t load_uint(const char *p, int width) {
    switch (width) {
    case 1: return *(const uint8_t *)p;
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

static int valid_width(int width) {
    return width == 1 || width == 2 || width == 4 || width == 8;
}

/* ---- Runner ------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int fd;                    /* the vCPU fd; -1 once closed */
    unsigned long request;     /* KVM_RUN */
    unsigned long generation;  /* fork_generation when made */
    Py_buffer page;            /* export held on the kvm_run mapping for the Runner's whole life */
    PyObject *view;            /* the memoryview of the mapping (exits slice their spans from it) */
    PyObject *classes;         /* tuple indexed by exit reason: an ExitBase subclass or None */
    PyObject **exits;          /* the exit object of each reason, made on first use and then reused */
    Py_ssize_t n_exits;
    /* The callbacks take the vCPU first (the Runner holds no reference to it: the vCPU holds the Runner) */
    PyObject *on_error;        /* Vcpu._run_failed(vcpu, errno): an exit for EINTR, else raises */
    PyObject *on_unknown;      /* called with the reason when `classes` has no class for it */
    PyObject *on_unusable;     /* raises ClosedError / ForkedError; with a thread id, StateError (busy) */
    Py_ssize_t reason_offset;  /* offset of kvm_run.exit_reason */
    pid_t tid;                 /* the thread inside KVM_RUN, 0 when none */
    vectorcallfunc vectorcall;
} RunnerObject;

static PyTypeObject RunnerType;
static PyTypeObject ExitBaseType;

/* How many payload values an exit decodes when run() returns (IoExit has the most: 6). */
#define EXIT_VALUES 8

typedef struct {
    PyObject_HEAD
    const char *run;           /* kvm_run, valid while `owner` lives */
    Py_ssize_t size;           /* bytes of the mapping */
    PyObject *owner;           /* the Runner (holding the export), or NULL for a detached exit */
    PyObject *vcpu_ref;        /* a weak reference to the vCPU: the Runner keeps its exits, the vCPU its Runner */
    PyObject *decoders;        /* the class's `_decoders`: the Field giving each of values[i], or NULL */
    PyObject *values[EXIT_VALUES];  /* read through READONLY member descriptors (see decoded_member) */
} ExitObject;

static int exit_decode(ExitObject *exit);

static PyObject *make_exit(PyTypeObject *cls, RunnerObject *runner, PyObject *vcpu) {
    ExitObject *exit = (ExitObject *)cls->tp_alloc(cls, 0);
    if (exit == NULL)
        return NULL;
    exit->run = runner->page.buf;
    exit->size = runner->page.len;
    Py_INCREF(runner);
    exit->owner = (PyObject *)runner;
    exit->vcpu_ref = PyWeakref_NewRef(vcpu, NULL);
    if (exit->vcpu_ref == NULL)
        goto fail;
    PyObject *decoders = PyObject_GetAttrString((PyObject *)cls, "_decoders");
    if (decoders == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            goto fail;
        PyErr_Clear();
    }
    if (decoders != NULL && decoders != Py_None) {
        if (!PyTuple_Check(decoders) || PyTuple_GET_SIZE(decoders) > EXIT_VALUES) {
            PyErr_Format(PyExc_TypeError, "%s._decoders must be a tuple of at most %d Fields", cls->tp_name,
                         EXIT_VALUES);
            Py_DECREF(decoders);
            goto fail;
        }
        if (PyTuple_GET_SIZE(decoders) > 0)
            exit->decoders = decoders;  /* NULL otherwise: nothing to decode at each exit */
        else
            Py_DECREF(decoders);
    } else {
        Py_XDECREF(decoders);
    }
    return (PyObject *)exit;
fail:
    Py_DECREF(exit);
    return NULL;
}

/* The answer of a Runner that cannot enter KVM_RUN: on_unusable() raises ClosedError or ForkedError
 * (closed, forked), on_unusable(tid) raises StateError (thread `tid` is inside KVM_RUN on it already). */
static PyObject *runner_unusable(RunnerObject *self, PyObject *vcpu, pid_t busy) {
    if (self->on_unusable == NULL) {
        PyErr_SetString(PyExc_ValueError, "this Runner was cleared");
        return NULL;
    }
    if (busy)
        return PyObject_CallFunction(self->on_unusable, "Oi", vcpu, (int)busy);
    return PyObject_CallOneArg(self->on_unusable, vcpu);
}

/* KVM_RUN once, the GIL released. Returns NULL with *result set to the ioctl's result, or -errno; when
 * the Runner cannot run (closed, forked, running in another thread) or was closed meanwhile (kvm_run may
 * be a stale copy by now), the answer of runner_unusable. One thread at a time: the check and the
 * claim of `tid` happen under the GIL, and kick() signals the one thread inside. */
static PyObject *runner_enter(RunnerObject *self, PyObject *vcpu, int *result) {
    int fd = self->fd;
    if (fd < 0 || self->generation != fork_generation)
        return runner_unusable(self, vcpu, 0);
    if (self->tid != 0)
        return runner_unusable(self, vcpu, self->tid);
    if (thread_tid == 0)
        thread_tid = (pid_t)syscall(SYS_gettid);
    self->tid = thread_tid;
    int r, err;
    Py_BEGIN_ALLOW_THREADS
    r = ioctl(fd, self->request, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    self->tid = 0;
    if (self->fd < 0)
        return runner_unusable(self, vcpu, 0);
    *result = r < 0 ? -err : r;
    return NULL;
}

/* KVM_RUN until the next exit of `vcpu` (whose Runner this is): its exit object (see the module's comment). */
static PyObject *runner_run(RunnerObject *self, PyObject *vcpu) {
    int result;
    PyObject *refused = runner_enter(self, vcpu, &result);
    if (refused != NULL || PyErr_Occurred())
        return refused;
    if (result < 0) {
        PyObject *code = PyLong_FromLong(-result);
        if (code == NULL)
            return NULL;
        PyObject *exit = PyObject_CallFunctionObjArgs(self->on_error, vcpu, code, NULL);
        Py_DECREF(code);
        return exit;
    }
    uint32_t reason = (uint32_t)load_uint((const char *)self->page.buf + self->reason_offset, 4);
    PyObject *cls = Py_None;
    if (reason < (uint32_t)PyTuple_GET_SIZE(self->classes))
        cls = PyTuple_GET_ITEM(self->classes, reason);
    if (cls == Py_None) {
        PyObject *number = PyLong_FromUnsignedLong(reason);
        if (number == NULL)
            return NULL;
        PyObject *exit = PyObject_CallFunctionObjArgs(self->on_unknown, vcpu, number, NULL);
        Py_DECREF(number);
        return exit;
    }
    /* One exit object per reason serves every run: its values are decoded anew each time. */
    PyObject *exit = self->exits[reason];
    if (exit == NULL) {
        exit = make_exit((PyTypeObject *)cls, self, vcpu);
        if (exit == NULL)
            return NULL;
        self->exits[reason] = exit;
    }
    if (((ExitObject *)exit)->decoders != NULL && exit_decode((ExitObject *)exit) < 0)
        return NULL;
    Py_INCREF(exit);
    return exit;
}

static PyObject *runner_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a Runner is called with the vCPU it runs");
        return NULL;
    }
    Py_INCREF(callable);  /* (another thread may drop the vCPU's reference while this one is in KVM_RUN) */
    PyObject *exit = runner_run((RunnerObject *)callable, args[0]);
    Py_DECREF(callable);
    return exit;
}

/* raw(vcpu): KVM_RUN once as the generated wrapper issues it (`vcpu.ioctls.run()`): the ioctl's result
 * or -errno, no exit decoded; kick() and close() reach it as they reach run(). */
static PyObject *runner_raw(RunnerObject *self, PyObject *vcpu) {
    int result;
    Py_INCREF(self);  /* (another thread may drop the vCPU's reference while this one is in KVM_RUN) */
    PyObject *refused = runner_enter(self, vcpu, &result);
    Py_DECREF(self);
    if (refused != NULL || PyErr_Occurred())
        return refused;
    return PyLong_FromLong(result);
}

static void runner_drop_exits(RunnerObject *self) {
    for (Py_ssize_t i = 0; i < self->n_exits; i++)
        Py_CLEAR(self->exits[i]);
}

static int runner_init(RunnerObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"fd", "request", "view", "classes", "on_error", "on_unknown", "on_unusable",
                               "reason_offset", NULL};
    int fd;
    unsigned long request;
    PyObject *view, *classes, *on_error, *on_unknown, *on_unusable;
    Py_ssize_t reason_offset;
    if (self->exits != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Runner is already initialized");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ikOO!OOOn:Runner", keywords, &fd, &request, &view,
                                     &PyTuple_Type, &classes, &on_error, &on_unknown,
                                     &on_unusable, &reason_offset))
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(classes); i++) {
        PyObject *cls = PyTuple_GET_ITEM(classes, i);
        if (cls != Py_None && !(PyType_Check(cls) && PyType_IsSubtype((PyTypeObject *)cls, &ExitBaseType))) {
            PyErr_Format(PyExc_TypeError, "classes[%zd] is not an exit class (a subclass of ExitBase)", i);
            return -1;
        }
    }
    if (!PyCallable_Check(on_error) || !PyCallable_Check(on_unknown) || !PyCallable_Check(on_unusable)) {
        PyErr_SetString(PyExc_TypeError, "on_error, on_unknown and on_unusable must be callable");
        return -1;
    }
    Py_buffer page;
    if (PyObject_GetBuffer(view, &page, PyBUF_WRITABLE) < 0)
        return -1;
    if (reason_offset < 0 || reason_offset > page.len - 4) {
        PyErr_Format(PyExc_ValueError, "reason_offset %zd is outside the %zd-byte kvm_run mapping",
                     reason_offset, page.len);
        PyBuffer_Release(&page);
        return -1;
    }
    self->exits = PyMem_Calloc(PyTuple_GET_SIZE(classes) + 1, sizeof(PyObject *));
    if (self->exits == NULL) {
        PyBuffer_Release(&page);
        PyErr_NoMemory();
        return -1;
    }
    self->n_exits = PyTuple_GET_SIZE(classes);
    self->page = page;  /* only now: a failed __init__ leaves no buffer behind for an exit to read */
    self->fd = fd;
    self->request = request;
    self->generation = fork_generation;
    self->reason_offset = reason_offset;
    Py_INCREF(view);
    self->view = view;
    Py_INCREF(classes);
    self->classes = classes;
    Py_INCREF(on_error);
    self->on_error = on_error;
    Py_INCREF(on_unknown);
    self->on_unknown = on_unknown;
    Py_INCREF(on_unusable);
    self->on_unusable = on_unusable;
    return 0;
}

static PyObject *runner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    RunnerObject *self = (RunnerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->vectorcall = runner_vectorcall;
    return (PyObject *)self;
}

/* Drop everything but the mapping export and `on_unusable` (exits may still read the page). */
static PyObject *runner_close(RunnerObject *self, PyObject *unused) {
    self->fd = -1;
    runner_drop_exits(self);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->on_unknown);
    Py_RETURN_NONE;
}

static int runner_traverse(RunnerObject *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->n_exits; i++)
        Py_VISIT(self->exits[i]);
    Py_VISIT(self->view);
    Py_VISIT(self->classes);
    Py_VISIT(self->on_error);
    Py_VISIT(self->on_unknown);
    Py_VISIT(self->on_unusable);
    return 0;
}

static int runner_clear(RunnerObject *self) {
    self->fd = -1;
    runner_drop_exits(self);
    Py_CLEAR(self->classes);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->on_unknown);
    Py_CLEAR(self->on_unusable);
    return 0;
}

static void runner_dealloc(RunnerObject *self) {
    PyObject_GC_UnTrack(self);
    runner_clear(self);
    PyMem_Free(self->exits);
    if (self->page.obj != NULL)
        PyBuffer_Release(&self->page);
    Py_CLEAR(self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *runner_call(PyObject *self, PyObject *args, PyObject *kwds) {
    return PyVectorcall_Call(self, args, kwds);
}

static PyObject *runner_get_closed(RunnerObject *self, void *unused) {
    return PyBool_FromLong(self->fd < 0);
}

static PyMethodDef runner_methods[] = {
    {"close", (PyCFunction)runner_close, METH_NOARGS,
     "Stop running (the next call raises through on_unusable); exits made so far stay readable."},
    {"raw", (PyCFunction)runner_raw, METH_O,
     "raw(vcpu): KVM_RUN once: the ioctl's result, or -errno (no exit decoded)."},
    {NULL},
};

static PyMemberDef runner_members[] = {
    {"tid", T_INT, offsetof(RunnerObject, tid), READONLY,
     "Kernel id of the thread inside KVM_RUN, 0 when none (what Vcpu.kick() signals)."},
    {"view", T_OBJECT, offsetof(RunnerObject, view), READONLY, "The kvm_run mapping (memoryview)."},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(RunnerObject, vectorcall), READONLY},
    {NULL},
};

static PyGetSetDef runner_getset[] = {
    {"closed", (getter)runner_get_closed, NULL, "Whether close() was called.", NULL},
    {NULL},
};

static PyTypeObject RunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvm._speedups.Runner",
    .tp_doc = "Runner(fd, request, view, classes, on_error, on_unknown, on_unusable, reason_offset)\n\n"
              "runner(vcpu) issues KVM_RUN (the GIL released) and returns the exit: an instance of\n"
              "classes[exit_reason], or on_unknown(vcpu, reason); a failure returns on_error(vcpu, errno).",
    .tp_basicsize = sizeof(RunnerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = runner_new,
    .tp_init = (initproc)runner_init,
    .tp_dealloc = (destructor)runner_dealloc,
    .tp_traverse = (traverseproc)runner_traverse,
    .tp_clear = (inquiry)runner_clear,
    .tp_call = runner_call,
    .tp_vectorcall_offset = offsetof(RunnerObject, vectorcall),
    .tp_methods = runner_methods,
    .tp_members = runner_members,
    .tp_getset = runner_getset,
};

/* ---- VcpuBase ---------------------------------------------------------------------------------- */

/* The C base of kvm.Vcpu: it holds the vCPU's Runner, and `run` is a method of the type, so that the
 * interpreter specialises `vcpu.run()` into a direct call of vcpu_base_run (a Runner stored in the
 * instance dict would be an attribute lookup plus a generic call on every exit). */
typedef struct {
    PyObject_HEAD
    PyObject *runner;  /* the Runner while the vCPU is open, else NULL or None */
} VcpuBaseObject;

static PyObject *vcpu_base_run(VcpuBaseObject *self, PyObject *unused) {
    PyObject *runner = self->runner;
    if (runner != NULL && Py_IS_TYPE(runner, &RunnerType)) {
        /* A reference of our own: another thread may close the vCPU (and drop its Runner) while this
         * one is inside KVM_RUN without the GIL. */
        Py_INCREF(runner);
        PyObject *exit = runner_run((RunnerObject *)runner, (PyObject *)self);
        Py_DECREF(runner);
        return exit;
    }
    /* closed: the subclass raises ClosedError or ForkedError */
    return PyObject_CallMethod((PyObject *)self, "_raise_unusable", NULL);
}

static int vcpu_base_traverse(VcpuBaseObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->runner);
    return 0;
}

static int vcpu_base_clear(VcpuBaseObject *self) {
    Py_CLEAR(self->runner);
    return 0;
}

static void vcpu_base_dealloc(VcpuBaseObject *self) {
    PyObject_GC_UnTrack(self);
    vcpu_base_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define RUN_DOC                                                                                        \
    "run() -> the typed exit: KVM_RUN until the next exit to user space (see kvm.exits).\n\n"           \
    "The GIL is released while the guest runs. EINTR (a signal, immediate_exit, kick()) returns an\n"   \
    "IntrExit; other failures raise KvmError; a closed or forked vCPU raises ClosedError or ForkedError."

static PyMethodDef vcpu_run_def = {"run", (PyCFunction)vcpu_base_run, METH_NOARGS, RUN_DOC};

static PyTypeObject VcpuBaseType;

/* bind_run(cls): `run` as a method of exactly `cls`. The 3.11 interpreter keeps a specialised call of a
 * C method only while the instance's type is exactly the type the method was made for, so a `run`
 * inherited from VcpuBase would fall back to a generic call on every exit; the subclass gets its own. */
static PyObject *vcpu_base_bind_run(PyObject *unused, PyObject *cls) {
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &VcpuBaseType)) {
        PyErr_SetString(PyExc_TypeError, "bind_run() needs a subclass of VcpuBase");
        return NULL;
    }
    PyObject *method = PyDescr_NewMethod((PyTypeObject *)cls, &vcpu_run_def);
    if (method == NULL)
        return NULL;
    int failed = PyObject_SetAttrString(cls, "run", method);
    Py_DECREF(method);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef vcpu_base_methods[] = {
    {"run", (PyCFunction)vcpu_base_run, METH_NOARGS, RUN_DOC},
    {"bind_run", (PyCFunction)vcpu_base_bind_run, METH_O | METH_STATIC,
     "bind_run(cls): give subclass `cls` a `run` method of its own (faster calls; see kvm/_speedups.c)."},
    {NULL},
};

static PyMemberDef vcpu_base_members[] = {
    {"_runner", T_OBJECT, offsetof(VcpuBaseObject, runner), 0, "The vCPU's Runner, None once closed."},
    {NULL},
};

static PyTypeObject VcpuBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvm._speedups.VcpuBase",
    .tp_doc = "The base of kvm.Vcpu: holds its Runner (`_runner`) and offers `run()`.",
    .tp_basicsize = sizeof(VcpuBaseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)vcpu_base_dealloc,
    .tp_traverse = (traverseproc)vcpu_base_traverse,
    .tp_clear = (inquiry)vcpu_base_clear,
    .tp_methods = vcpu_base_methods,
    .tp_members = vcpu_base_members,
};

/* ---- ExitBase ---------------------------------------------------------------------------------- */

/* ExitBase(vcpu, *rest): an exit of `vcpu` (its Runner is `vcpu._runner`); extra arguments are left
 * to the subclass's __init__. */
static PyObject *exit_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_Format(PyExc_TypeError, "%s() needs the vcpu", type->tp_name);
        return NULL;
    }
    PyObject *vcpu = PyTuple_GET_ITEM(args, 0);
    PyObject *runner = PyObject_GetAttrString(vcpu, "_runner");
    if (runner == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    else if (runner == NULL)
        return NULL;
    if (runner == NULL || !PyObject_TypeCheck(runner, &RunnerType) || ((RunnerObject *)runner)->view == NULL) {
        Py_XDECREF(runner);
        PyErr_Format(PyExc_TypeError, "%s(): vcpu._runner is not an initialised Runner (is the vCPU closed?)",
                     type->tp_name);
        return NULL;
    }
    ExitObject *exit = (ExitObject *)make_exit(type, (RunnerObject *)runner, vcpu);
    Py_DECREF(runner);
    if (exit == NULL)
        return NULL;
    if (exit->decoders != NULL && exit_decode(exit) < 0) {
        Py_DECREF(exit);
        return NULL;
    }
    return (PyObject *)exit;
}

static int exit_init(PyObject *self, PyObject *args, PyObject *kwds) {
    return 0;
}

/* Exit classes are Python subclasses: their heap type is visited and released by CPython's
 * subtype_traverse / subtype_dealloc, not here. */
static int exit_traverse(ExitObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->vcpu_ref);
    Py_VISIT(self->decoders);
    for (int i = 0; i < EXIT_VALUES; i++)
        Py_VISIT(self->values[i]);
    return 0;
}

static int exit_clear(ExitObject *self) {
    /* The page pointer dies with the export the owner holds: drop both together. */
    self->run = NULL;
    self->size = 0;
    Py_CLEAR(self->owner);
    Py_CLEAR(self->vcpu_ref);
    Py_CLEAR(self->decoders);
    for (int i = 0; i < EXIT_VALUES; i++)
        Py_CLEAR(self->values[i]);
    return 0;
}

static void exit_dealloc(ExitObject *self) {
    PyObject_GC_UnTrack(self);
    exit_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *exit_get_page(ExitObject *self, void *unused) {
    PyObject *view = self->owner == NULL ? NULL : ((RunnerObject *)self->owner)->view;
    if (view == NULL)
        Py_RETURN_NONE;
    Py_INCREF(view);
    return view;
}

static PyObject *exit_redecode(ExitObject *self, PyObject *unused) {
    if (self->decoders != NULL && exit_decode(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* decoded_member(cls, name, index): a read-only attribute `name` of `cls` holding values[index], which
 * run() fills from the Field at cls._decoders[index]. It is a member descriptor (not a Field): reading
 * it is the interpreter's specialised slot load, the cheapest attribute read there is. */
static PyObject *exit_decoded_member(PyObject *unused, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyType_Check(args[0]) || !PyUnicode_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "decoded_member(cls, name, index) takes a class, a str and an int");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (!PyType_IsSubtype(cls, &ExitBaseType)) {
        PyErr_SetString(PyExc_TypeError, "decoded_member(): cls is not a subclass of ExitBase");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= EXIT_VALUES) {
        PyErr_Format(PyExc_ValueError, "decoded_member(): index %zd is outside 0..%d", index, EXIT_VALUES - 1);
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(args[1]);
    if (name == NULL)
        return NULL;
    /* The descriptor keeps pointing at its PyMemberDef: it lives as long as the process (exit classes
     * are made once, and kvm/exits.py binds each field once). */
    PyMemberDef *member = PyMem_Calloc(1, sizeof(PyMemberDef));
    char *name_copy = PyMem_Malloc(strlen(name) + 1);
    if (member == NULL || name_copy == NULL) {
        PyMem_Free(member);
        PyMem_Free(name_copy);
        return PyErr_NoMemory();
    }
    strcpy(name_copy, name);
    member->name = name_copy;
    member->type = T_OBJECT_EX;
    member->offset = offsetof(ExitObject, values) + index * sizeof(PyObject *);
    member->flags = READONLY;
    member->doc = "Decoded from kvm_run when run() returned.";
    return PyDescr_NewMember(cls, member);
}

/* Setting a payload attribute fails naming it (the member's own message is just "readonly attribute"). */
static int exit_setattro(PyObject *self, PyObject *name, PyObject *value) {
    int result = PyObject_GenericSetAttr(self, name, value);
    if (result < 0 && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyObject *descr = PyObject_GetAttr((PyObject *)Py_TYPE(self), name);  /* a class gives the descriptor */
        int readonly_member = descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                              (((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
        Py_XDECREF(descr);
        PyErr_Clear();
        if (readonly_member) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            PyErr_Format(PyExc_AttributeError, "%s.%U is read-only (reply through the exit's methods)",
                         Py_TYPE(self)->tp_name, name);
        } else {
            PyErr_Restore(type, value, traceback);
        }
    }
    return result;
}

static PyMethodDef exit_methods[] = {
    {"_decode", (PyCFunction)exit_redecode, METH_NOARGS,
     "Decode the payload values from kvm_run again (after a reply changed it)."},
    {"decoded_member", (PyCFunction)(void (*)(void))exit_decoded_member, METH_FASTCALL | METH_STATIC,
     "decoded_member(cls, name, index): the read-only attribute giving decoded value `index` of cls."},
    {NULL},
};


static PyObject *exit_get_vcpu(ExitObject *self, void *unused) {
    if (self->vcpu_ref == NULL)
        Py_RETURN_NONE;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *vcpu;
    if (PyWeakref_GetRef(self->vcpu_ref, &vcpu) < 0)
        return NULL;
    if (vcpu == NULL)
        Py_RETURN_NONE;
    return vcpu;
#else
    PyObject *vcpu = PyWeakref_GetObject(self->vcpu_ref);  /* (borrowed; Py_None once gone) */
    Py_INCREF(vcpu);
    return vcpu;
#endif
}

static PyGetSetDef exit_getset[] = {
    {"vcpu", (getter)exit_get_vcpu, NULL, "The Vcpu this exit came from (None once that object is gone).", NULL},
    {"_page", (getter)exit_get_page, NULL, "The vCPU's kvm_run mapping (memoryview).", NULL},
    {NULL},
};

static PyTypeObject ExitBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvm._speedups.ExitBase",
    .tp_doc = "ExitBase(vcpu): the base of every exit; its class's _decoders fill its decoded members (see\n"
              "decoded_member) at each exit, Field descriptors read the rest of its payload from kvm_run.",
    .tp_basicsize = sizeof(ExitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = exit_new,
    .tp_init = exit_init,
    .tp_dealloc = (destructor)exit_dealloc,
    .tp_traverse = (traverseproc)exit_traverse,
    .tp_clear = (inquiry)exit_clear,
    .tp_setattro = exit_setattro,
    .tp_methods = exit_methods,
    .tp_getset = exit_getset,
};

/* ---- Field ------------------------------------------------------------------------------------- */

enum field_kind { KIND_INT, KIND_BOOL, KIND_BYTES, KIND_VALUE };

typedef struct {
    PyObject_HEAD
    PyObject *name;
    int kind;
    Py_ssize_t offset;   /* INT/BOOL: the field; BYTES/VALUE: where the data starts, or the field holding that */
    int width;           /* width of the field at `offset` */
    int indirect;        /* BYTES/VALUE: `offset` holds the data's offset (from the start of kvm_run) */
    Py_ssize_t length_offset;  /* BYTES/VALUE: field giving the length (VALUE: the element size) */
    int length_width;
    Py_ssize_t times_offset;   /* BYTES: optional field multiplying the length (-1: none) */
    int times_width;
    int is_signed;
} FieldObject;

static PyTypeObject FieldType;

static const char *field_kinds[] = {"int", "bool", "bytes", "value", NULL};

/* Offsets beyond this are refused: kvm_run is a few pages, and bounded offsets keep `offset + width`
 * and the other sums of the bounds checks far from overflowing. */
#define MAX_FIELD_OFFSET (1 << 24)

static int field_init(FieldObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"name", "kind", "offset", "width", "signed", "indirect", "length_offset",
                               "length_width", "times_offset", "times_width", NULL};
    PyObject *name;
    const char *kind;
    Py_ssize_t offset, length_offset = -1, times_offset = -1;
    int width, is_signed = 0, indirect = 0, length_width = 0, times_width = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Usni|$ppnini:Field", keywords, &name, &kind, &offset,
                                     &width, &is_signed, &indirect, &length_offset, &length_width,
                                     &times_offset, &times_width))
        return -1;
    int k = 0;
    while (field_kinds[k] != NULL && strcmp(field_kinds[k], kind) != 0)
        k++;
    if (field_kinds[k] == NULL) {
        PyErr_Format(PyExc_ValueError, "Field %U: unknown kind %s (int, bool, bytes, value)", name, kind);
        return -1;
    }
    int needs_length = (k == KIND_BYTES || k == KIND_VALUE);
    if (offset > MAX_FIELD_OFFSET || length_offset > MAX_FIELD_OFFSET || times_offset > MAX_FIELD_OFFSET) {
        PyErr_Format(PyExc_ValueError, "Field %U: offsets must be at most %d (kvm_run is a few pages)", name,
                     MAX_FIELD_OFFSET);
        return -1;
    }
    if (offset < 0 || (k != KIND_BYTES && k != KIND_VALUE && !valid_width(width)) ||
        (indirect && !valid_width(width)) ||
        (needs_length && (length_offset < 0 || !valid_width(length_width))) ||
        (times_offset >= 0 && !valid_width(times_width))) {
        PyErr_Format(PyExc_ValueError, "Field %U: bad offset or width (widths are 1, 2, 4 or 8 bytes)", name);
        return -1;
    }
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    self->kind = k;
    self->offset = offset;
    self->width = width;
    self->is_signed = is_signed;
    self->indirect = indirect;
    self->length_offset = length_offset;
    self->length_width = length_width;
    self->times_offset = times_offset;
    self->times_width = times_width;
    return 0;
}

static PyObject *out_of_page(FieldObject *self, ExitObject *exit, Py_ssize_t start, Py_ssize_t length) {
    PyErr_Format(PyExc_ValueError, "%U: [%zd, %zd) is outside the %zd-byte kvm_run mapping", self->name,
                 start, start + length, exit->size);
    return NULL;
}

/* An int object for `value` (sign-extended already when is_signed): `reuse` itself when it is an int of
 * that value, so that decoding the same port or address exit after exit allocates nothing. */
static PyObject *int_object(uint64_t value, int is_signed, PyObject *reuse) {
    if (reuse != NULL && PyLong_CheckExact(reuse)) {
        int same;
        if (is_signed) {
            int overflow;
            long long held = PyLong_AsLongLongAndOverflow(reuse, &overflow);
            same = !overflow && held == (long long)value;
        } else {
            unsigned long long held = PyLong_AsUnsignedLongLong(reuse);
            same = held == value;
        }
        if (PyErr_Occurred()) {
            PyErr_Clear();
            same = 0;
        }
        if (same) {
            Py_INCREF(reuse);
            return reuse;
        }
    }
    return is_signed ? PyLong_FromLongLong((long long)value) : PyLong_FromUnsignedLongLong(value);
}

/* The field's value in the kvm_run page of `exit` (an int may be `reuse`, see int_object). */
static PyObject *field_read(FieldObject *self, ExitObject *exit, PyObject *reuse) {
    if (self->name == NULL) {
        PyErr_SetString(PyExc_ValueError, "this Field was never initialised");
        return NULL;
    }
    const char *run = exit->run;
    if (run == NULL) {
        PyErr_Format(PyExc_ValueError, "%U: this exit no longer has a kvm_run page", self->name);
        return NULL;
    }
    Py_ssize_t size = exit->size;
    if (self->offset + self->width > size)
        return out_of_page(self, exit, self->offset, self->width);
    if (self->kind == KIND_INT || self->kind == KIND_BOOL) {
        uint64_t value = load_uint(run + self->offset, self->width);
        if (self->kind == KIND_BOOL)
            return PyBool_FromLong(value != 0);
        if (self->is_signed) {
            int shift = 64 - 8 * self->width;
            value = (uint64_t)((long long)(value << shift) >> shift);
        }
        return int_object(value, self->is_signed, reuse);
    }
    Py_ssize_t start = self->indirect ? (Py_ssize_t)load_uint(run + self->offset, self->width) : self->offset;
    if (self->length_offset + self->length_width > size ||
        (self->times_offset >= 0 && self->times_offset + self->times_width > size))
        return out_of_page(self, exit, self->length_offset, self->length_width);
    uint64_t length = load_uint(run + self->length_offset, self->length_width);
    if (self->kind == KIND_VALUE) {
        if (length < 1 || length > 8) {
            PyErr_Format(PyExc_ValueError, "%U: an element of %llu bytes is not an integer", self->name,
                         (unsigned long long)length);
            return NULL;
        }
        if (start < 0 || start > size || start + (Py_ssize_t)length > size)
            return out_of_page(self, exit, start, (Py_ssize_t)length);
        unsigned char bytes[8] = {0};
        memcpy(PY_LITTLE_ENDIAN ? bytes : bytes + 8 - length, run + start, length);
        uint64_t value;
        memcpy(&value, bytes, 8);
        return int_object(value, 0, reuse);
    }
    if (self->times_offset >= 0) {
        uint64_t times = load_uint(run + self->times_offset, self->times_width);
        length = (times != 0 && length > (uint64_t)size / times) ? (uint64_t)size + 1 : length * times;
    }
    if (start < 0 || start > size || length > (uint64_t)size || start + (Py_ssize_t)length > size)
        return out_of_page(self, exit, start, (Py_ssize_t)length);
    PyObject *view = ((RunnerObject *)exit->owner)->view;
    return PySequence_GetSlice(view, start, start + (Py_ssize_t)length);
}

static PyObject *field_get(FieldObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return (PyObject *)self;
    }
    if (!PyObject_TypeCheck(obj, &ExitBaseType)) {
        PyErr_Format(PyExc_TypeError, "%U reads an exit, not %s", self->name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return field_read(self, (ExitObject *)obj, NULL);
}

/* Fill exit->values from its decoders. */
static int exit_decode(ExitObject *exit) {
    PyObject *decoders = exit->decoders;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(decoders); i++) {
        PyObject *field = PyTuple_GET_ITEM(decoders, i);
        if (field == Py_None)
            continue;
        if (!Py_IS_TYPE(field, &FieldType)) {
            PyErr_Format(PyExc_TypeError, "%s._decoders[%zd] is not a Field", Py_TYPE(exit)->tp_name, i);
            return -1;
        }
        PyObject *old = exit->values[i];
        PyObject *value = field_read((FieldObject *)field, exit, old);
        if (value == NULL)
            return -1;
        exit->values[i] = value;
        Py_XDECREF(old);
    }
    return 0;
}

static int field_set(FieldObject *self, PyObject *obj, PyObject *value) {
    PyErr_Format(PyExc_AttributeError, "%U is read-only (reply through the exit's methods)", self->name);
    return -1;
}

static void field_dealloc(FieldObject *self) {
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *field_repr(FieldObject *self) {
    if (self->name == NULL)
        return PyUnicode_FromString("<Field (not initialised)>");
    return PyUnicode_FromFormat("<Field %U %s at %zd>", self->name, field_kinds[self->kind], self->offset);
}

static PyMemberDef field_members[] = {
    {"name", T_OBJECT, offsetof(FieldObject, name), READONLY, NULL},
    {"offset", T_PYSSIZET, offsetof(FieldObject, offset), READONLY, NULL},
    {"width", T_INT, offsetof(FieldObject, width), READONLY, NULL},
    {NULL},
};

static PyTypeObject FieldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvm._speedups.Field",
    .tp_doc = "Field(name, kind, offset, width, *, signed=False, indirect=False, length_offset=-1,\n"
              "      length_width=0, times_offset=-1, times_width=0)\n\n"
              "A read-only descriptor of an exit's payload in kvm_run. kind: 'int' or 'bool' (the field\n"
              "at offset), 'bytes' (a memoryview of length [* times] bytes starting at offset, or at the\n"
              "offset stored there when indirect), 'value' (the first element of such data as an int).",
    .tp_basicsize = sizeof(FieldObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)field_init,
    .tp_dealloc = (destructor)field_dealloc,
    .tp_repr = (reprfunc)field_repr,
    .tp_descr_get = (descrgetfunc)field_get,
    .tp_descr_set = (descrsetfunc)field_set,
    .tp_members = field_members,
};

/* An ioctl argument passed by value: any int from -2**63 to 2**64 - 1 (a C long or unsigned long). */
static int as_ioctl_value(PyObject *obj, unsigned long *value) {
    *value = PyLong_AsUnsignedLong(obj);
    if (!(*value == (unsigned long)-1 && PyErr_Occurred()))
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_OverflowError))
        return -1;
    PyErr_Clear();
    long signed_value = PyLong_AsLong(obj);
    if (signed_value == -1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_OverflowError, "ioctl argument does not fit in 64 bits");
        return -1;
    }
    *value = (unsigned long)signed_value;
    return 0;
}

/* ---- ValueIoctl -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned long request;
    unsigned long generation;
    PyObject *fallback;
    vectorcallfunc vectorcall;
} ValueIoctlObject;

/* One argument: an int (or int subclass, such as an IntEnum member) is passed by value and the result
 * returned; anything else, a failure, a closed or forked fd go to `fallback(arg)`, which does the same
 * in Python with full argument conversion and error reporting. For quick, non-blocking ioctls only
 * (the GIL is kept). */
static PyObject *value_ioctl_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames) {
    ValueIoctlObject *self = (ValueIoctlObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 1 && kwnames == NULL && PyLong_Check(args[0]) && !PyBool_Check(args[0]) && self->fd >= 0 &&
        self->generation == fork_generation) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(args[0], &overflow);
        if (!overflow && value >= 0) {
            /* (the GIL is kept: the call is short, and no other thread can close the fd meanwhile) */
            int result = ioctl(self->fd, self->request, (unsigned long)value);
            if (result >= 0)
                return PyLong_FromLong(result);
        }
        PyErr_Clear();
    }
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_ValueError, "this ValueIoctl was cleared");
        return NULL;
    }
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static int value_ioctl_init(ValueIoctlObject *self, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"fd", "request", "fallback", NULL};
    int fd;
    unsigned long request;
    PyObject *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ikO:ValueIoctl", keywords, &fd, &request, &fallback))
        return -1;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return -1;
    }
    self->fd = fd;
    self->request = request;
    self->generation = fork_generation;
    Py_INCREF(fallback);
    Py_XSETREF(self->fallback, fallback);
    return 0;
}

static PyObject *value_ioctl_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    ValueIoctlObject *self = (ValueIoctlObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->vectorcall = value_ioctl_vectorcall;
    return (PyObject *)self;
}

static int value_ioctl_traverse(ValueIoctlObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->fallback);
    return 0;
}

static int value_ioctl_clear(ValueIoctlObject *self) {
    self->fd = -1;
    Py_CLEAR(self->fallback);
    return 0;
}

static void value_ioctl_dealloc(ValueIoctlObject *self) {
    PyObject_GC_UnTrack(self);
    value_ioctl_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *value_ioctl_close(ValueIoctlObject *self, PyObject *unused) {
    self->fd = -1;
    Py_RETURN_NONE;
}

static PyMethodDef value_ioctl_methods[] = {
    {"close", (PyCFunction)value_ioctl_close, METH_NOARGS, "From now on every call goes to the fallback."},
    {NULL},
};

static PyMemberDef value_ioctl_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(ValueIoctlObject, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject ValueIoctlType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvm._speedups.ValueIoctl",
    .tp_doc = "ValueIoctl(fd, request, fallback)\n\n"
              "Called with an int in 0..2**63-1 (not a bool): ioctl(fd, request, value) and its result;\n"
              "anything else (another argument, a failure, a closed or forked fd) is fallback(*args).",
    .tp_basicsize = sizeof(ValueIoctlObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = value_ioctl_new,
    .tp_init = (initproc)value_ioctl_init,
    .tp_dealloc = (destructor)value_ioctl_dealloc,
    .tp_traverse = (traverseproc)value_ioctl_traverse,
    .tp_clear = (inquiry)value_ioctl_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ValueIoctlObject, vectorcall),
    .tp_methods = value_ioctl_methods,
    .tp_members = value_ioctl_members,
};

/* ---- IoctlMethod ------------------------------------------------------------------------------ */

/* KvmFd._ioctl (kvm/_fd.py) in one C call, for an ioctl whose gate this fd's `_passed` table says was
 * passed, with an int argument (by value) or a cdata pointer whose type says it has the room the
 * kernel uses. It does what the Python method does on that path, in the same order: note the
 * calling thread in `_users` (close() in another thread waits for it), check the fd, issue the ioctl
 * (the GIL released; EINTR retried after running signal handlers, unless the name is in
 * `eintr_answers`), raise `error(name, fd_kind, errno)` on failure, then leave `_users` and close
 * the fd if a close() deferred it. Anything else (a closed or forked fd, a gate not passed yet, an
 * argument to check) is `fallback(obj, name, arg)`: the Python method, which reports or checks. */

typedef struct {
    PyObject_HEAD
    PyObject *fallback;       /* the Python method: fallback(obj, name, arg=0) */
    PyObject *raw_ioctl;      /* the cffi function int ioctl(int, unsigned long, void *) */
    PyObject *ffi;            /* its FFI: errno, typeof() */
    PyObject *from_buffer;    /* the class of ffi.from_buffer() cdata, whose type tells nothing of its room */
    PyObject *pointed_room;   /* dict: pointer ctype -> bytes every pointer of that type has room for */
    PyObject *eintr_answers;  /* frozenset of the names whose EINTR is an answer */
    PyObject *error;          /* KvmError */
    PyObject *cdata;          /* ffi.CData */
    PyObject *type_of;        /* ffi.typeof */
    vectorcallfunc vectorcall;
} IoctlMethodObject;

static PyObject *str_users, *str_fd, *str_passed, *str_closing_fd, *str_close_deferred, *str_fd_kind,
    *str_errno, *str_remove;

static PyObject *ioctl_method_fallback(IoctlMethodObject *self, PyObject *obj, PyObject *name, PyObject *arg) {
    PyObject *args[3] = {obj, name, arg};
    return PyObject_Vectorcall(self->fallback, args, arg == NULL ? 2 : 3, NULL);
}

/* Take `me` out of `users`, the list it was put in (list.remove: the list is the user's to fill with
 * anything), then close the fd if a close() left it to the last user: KvmFd._leave. An exception of
 * leaving replaces the call's own, which becomes its __context__, as an exception raised in a `finally:`
 * block does. */
static int ioctl_method_leave(PyObject *obj, PyObject *users, PyObject *me) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int failed = 0;
    PyObject *removed = PyObject_CallMethodOneArg(users, str_remove, me);
    if (removed == NULL)
        failed = 1;
    Py_XDECREF(removed);
    if (!failed && PyList_GET_SIZE(users) == 0) {
        PyObject *closing = PyObject_GetAttr(obj, str_closing_fd);
        long closing_fd = closing == NULL ? -1 : PyLong_AsLong(closing);
        Py_XDECREF(closing);
        if (PyErr_Occurred())
            failed = 1;
        else if (closing_fd >= 0) {
            PyObject *done = PyObject_CallMethodNoArgs(obj, str_close_deferred);
            failed = done == NULL;
            Py_XDECREF(done);
        }
    }
    if (type == NULL)
        return failed ? -1 : 0;
    if (!failed) {
        PyErr_Restore(type, value, traceback);
        return -1;
    }
    PyObject *new_type, *new_value, *new_traceback;
    PyErr_Fetch(&new_type, &new_value, &new_traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyErr_NormalizeException(&new_type, &new_value, &new_traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    if (new_value != NULL && value != NULL && new_value != value)
        PyException_SetContext(new_value, value);  /* (steals the reference to value) */
    else
        Py_XDECREF(value);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    PyErr_Restore(new_type, new_value, new_traceback);
    return -1;
}

static PyObject *ioctl_method_failed(PyObject *obj, PyObject *error, PyObject *name, int err) {
    PyObject *fd_kind = PyObject_GetAttr(obj, str_fd_kind);
    if (fd_kind == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(error, "OOi", name, fd_kind, err);
    Py_DECREF(fd_kind);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Whether `arg` is a cdata whose type says it has at least `room` bytes (see KvmFd._check_room). */
static int ioctl_method_has_room(IoctlMethodObject *self, PyObject *arg, long room) {
    if (room == 0)
        return 1;
    if ((PyObject *)Py_TYPE(arg) == self->from_buffer)
        return 0;
    int is_cdata = PyObject_IsInstance(arg, self->cdata);
    if (is_cdata <= 0)
        return is_cdata;
    PyObject *ctype = PyObject_CallOneArg(self->type_of, arg);
    if (ctype == NULL)
        return -1;
    PyObject *known = PyDict_GetItemWithError(self->pointed_room, ctype);  /* borrowed */
    Py_DECREF(ctype);
    if (known == NULL)
        return PyErr_Occurred() ? -1 : 0;
    long size = PyLong_AsLong(known);
    if (size == -1 && PyErr_Occurred())
        return -1;
    return size >= room;
}

/* The ioctl itself: its result, or -1 with an exception set. */
static long ioctl_method_issue(IoctlMethodObject *self, PyObject *obj, PyObject *name, int fd,
                               unsigned long number, PyObject *arg, int by_value, unsigned long value) {
    for (;;) {
        long result;
        int err;
        if (by_value) {
            Py_BEGIN_ALLOW_THREADS
            result = ioctl(fd, number, value);
            err = errno;
            Py_END_ALLOW_THREADS
        } else {
            PyObject *fd_obj = PyLong_FromLong(fd), *number_obj = PyLong_FromUnsignedLong(number);
            PyObject *answer = NULL;
            if (fd_obj != NULL && number_obj != NULL) {
                PyObject *args[3] = {fd_obj, number_obj, arg};
                answer = PyObject_Vectorcall(self->raw_ioctl, args, 3, NULL);  /* (cffi releases the GIL) */
            }
            Py_XDECREF(fd_obj);
            Py_XDECREF(number_obj);
            if (answer == NULL)
                return -1;
            result = PyLong_AsLong(answer);
            Py_DECREF(answer);
            if (result == -1 && PyErr_Occurred())
                return -1;
            err = 0;
            if (result < 0) {
                PyObject *saved = PyObject_GetAttr(self->ffi, str_errno);
                if (saved == NULL)
                    return -1;
                err = (int)PyLong_AsLong(saved);
                Py_DECREF(saved);
                if (err == -1 && PyErr_Occurred())
                    return -1;
            }
        }
        if (result >= 0)
            return result;
        int answers = err == EINTR ? PySet_Contains(self->eintr_answers, name) : 1;
        if (answers < 0)
            return -1;
        if (answers) {
            ioctl_method_failed(obj, self->error, name, err);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)  /* (interrupted by a signal: its handler runs, then the ioctl again) */
            return -1;
    }
}

static PyObject *ioctl_method_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                         PyObject *kwnames) {
    IoctlMethodObject *self = (IoctlMethodObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_ValueError, "this IoctlMethod was cleared");
        return NULL;
    }
    if (kwnames != NULL || nargs < 2 || nargs > 3 || !PyUnicode_CheckExact(args[1]))
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    PyObject *obj = args[0], *name = args[1], *arg = nargs == 3 ? args[2] : NULL;

    PyObject *users = PyObject_GetAttr(obj, str_users);
    if (users == NULL)
        return NULL;
    if (!PyList_CheckExact(users)) {
        Py_DECREF(users);
        return ioctl_method_fallback(self, obj, name, arg);
    }
    PyObject *me = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (me == NULL || PyList_Append(users, me) < 0) {
        Py_XDECREF(me);
        Py_DECREF(users);
        return NULL;
    }
    /* From here on `me` is in _users: every way out goes through ioctl_method_leave(). */
    PyObject *result = NULL;
    int fd = -1, by_value = 0, fast = 0;
    unsigned long number = 0, value = 0;
    long room = 0;
    PyObject *fd_obj = PyObject_GetAttr(obj, str_fd), *passed = NULL, *entry = NULL;
    if (fd_obj == NULL)
        goto leave;
    long fd_long = PyLong_Check(fd_obj) ? PyLong_AsLong(fd_obj) : -1;
    if (fd_long == -1 && PyErr_Occurred())
        goto leave;
    passed = PyObject_GetAttr(obj, str_passed);
    if (passed == NULL)
        goto leave;
    if (fd_long < 0 || fd_long > INT_MAX || !PyDict_CheckExact(passed))
        goto decided;
    entry = PyDict_GetItemWithError(passed, name);  /* borrowed */
    if (entry == NULL) {
        if (PyErr_Occurred())
            goto leave;
        goto decided;  /* the gate is not passed yet: the Python method passes it */
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2)
        goto decided;
    number = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(entry, 0));
    room = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
    if (PyErr_Occurred())
        goto leave;
    fd = (int)fd_long;
    if (arg == NULL || PyLong_Check(arg)) {
        by_value = 1;
        if (arg != NULL && as_ioctl_value(arg, &value) < 0) {
            PyErr_Clear();  /* (out of range: the Python method says so) */
            goto decided;
        }
        fast = 1;
    } else {
        int has_room = ioctl_method_has_room(self, arg, room);
        if (has_room < 0)
            goto leave;
        fast = has_room;
    }
decided:
    if (fast) {
        long answer = ioctl_method_issue(self, obj, name, fd, number, arg, by_value, value);
        if (answer >= 0)
            result = PyLong_FromLong(answer);
    }
leave:
    Py_XDECREF(fd_obj);
    Py_XDECREF(passed);
    if (ioctl_method_leave(obj, users, me) < 0)
        Py_CLEAR(result);
    Py_DECREF(me);
    Py_DECREF(users);
    if (!fast && !PyErr_Occurred())
        return ioctl_method_fallback(self, obj, name, arg);  /* (the Python method holds the fd itself) */
    return result;
}

static PyObject *ioctl_method_get(PyObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static int ioctl_method_traverse(IoctlMethodObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->fallback);
    Py_VISIT(self->raw_ioctl);
    Py_VISIT(self->ffi);
    Py_VISIT(self->from_buffer);
    Py_VISIT(self->pointed_room);
    Py_VISIT(self->eintr_answers);
    Py_VISIT(self->error);
    Py_VISIT(self->cdata);
    Py_VISIT(self->type_of);
    return 0;
}

static int ioctl_method_clear(IoctlMethodObject *self) {
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->raw_ioctl);
    Py_CLEAR(self->ffi);
    Py_CLEAR(self->from_buffer);
    Py_CLEAR(self->pointed_room);
    Py_CLEAR(self->eintr_answers);
    Py_CLEAR(self->error);
    Py_CLEAR(self->cdata);
    Py_CLEAR(self->type_of);
    return 0;
}

static void ioctl_method_dealloc(IoctlMethodObject *self) {
    PyObject_GC_UnTrack(self);
    ioctl_method_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* __name__ and __qualname__ are the Python method's, for reprs and tracebacks */
static PyObject *ioctl_method_fallback_attr(IoctlMethodObject *self, void *name) {
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_ValueError, "this IoctlMethod was cleared");
        return NULL;
    }
    return PyObject_GetAttrString(self->fallback, (const char *)name);
}

static PyGetSetDef ioctl_method_getset[] = {
    {"__name__", (getter)ioctl_method_fallback_attr, NULL, NULL, "__name__"},
    {"__qualname__", (getter)ioctl_method_fallback_attr, NULL, NULL, "__qualname__"},
    {NULL},
};

static PyMemberDef ioctl_method_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(IoctlMethodObject, vectorcall), READONLY},
    {"__wrapped__", T_OBJECT, offsetof(IoctlMethodObject, fallback), READONLY},
    {NULL},
};

static PyTypeObject IoctlMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvm._speedups.IoctlMethod",
    .tp_doc = "KvmFd._ioctl in one C call where the gate was passed and the argument needs no check; see\n"
              "ioctl_method().",
    .tp_basicsize = sizeof(IoctlMethodObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_dealloc = (destructor)ioctl_method_dealloc,
    .tp_traverse = (traverseproc)ioctl_method_traverse,
    .tp_clear = (inquiry)ioctl_method_clear,
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = ioctl_method_get,
    .tp_vectorcall_offset = offsetof(IoctlMethodObject, vectorcall),
    .tp_members = ioctl_method_members,
    .tp_getset = ioctl_method_getset,
};

static PyObject *speedups_ioctl_method(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"fallback", "raw_ioctl", "ffi", "from_buffer", "pointed_room", "eintr_answers",
                               "error", NULL};
    PyObject *fallback, *raw_ioctl, *ffi, *from_buffer, *pointed_room, *eintr_answers, *error;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO!O!O:ioctl_method", keywords, &fallback, &raw_ioctl, &ffi,
                                     &from_buffer, &PyDict_Type, &pointed_room, &PyFrozenSet_Type, &eintr_answers,
                                     &error))
        return NULL;
    if (!PyCallable_Check(fallback) || !PyCallable_Check(raw_ioctl) || !PyCallable_Check(error) ||
        !PyType_Check(from_buffer)) {
        PyErr_SetString(PyExc_TypeError, "ioctl_method: fallback, raw_ioctl and error must be callable, "
                                         "from_buffer a class");
        return NULL;
    }
    PyObject *cdata = PyObject_GetAttrString(ffi, "CData");
    PyObject *type_of = cdata == NULL ? NULL : PyObject_GetAttrString(ffi, "typeof");
    if (type_of == NULL) {
        Py_XDECREF(cdata);
        return NULL;
    }
    IoctlMethodObject *self = PyObject_GC_New(IoctlMethodObject, &IoctlMethodType);
    if (self == NULL) {
        Py_DECREF(cdata);
        Py_DECREF(type_of);
        return NULL;
    }
    self->fallback = Py_NewRef(fallback);
    self->raw_ioctl = Py_NewRef(raw_ioctl);
    self->ffi = Py_NewRef(ffi);
    self->from_buffer = Py_NewRef(from_buffer);
    self->pointed_room = Py_NewRef(pointed_room);
    self->eintr_answers = Py_NewRef(eintr_answers);
    self->error = Py_NewRef(error);
    self->cdata = cdata;
    self->type_of = type_of;
    self->vectorcall = ioctl_method_vectorcall;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ---- ioctl ------------------------------------------------------------------------------------- */

static PyObject *speedups_ioctl(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "ioctl(fd, request, value) takes 3 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < INT_MIN || fd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "fd does not fit in a C int");
        return NULL;
    }
    unsigned long request = PyLong_AsUnsignedLong(args[1]);
    if (request == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    unsigned long value;
    if (as_ioctl_value(args[2], &value) < 0)
        return NULL;
    int result, err;
    Py_BEGIN_ALLOW_THREADS
    result = ioctl((int)fd, request, value);
    err = errno;
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(result < 0 ? -err : result);
}

static PyMethodDef speedups_functions[] = {
    {"ioctl_method", (PyCFunction)(void (*)(void))speedups_ioctl_method, METH_VARARGS | METH_KEYWORDS,
     "ioctl_method(fallback, raw_ioctl, ffi, from_buffer, pointed_room, eintr_answers, error)\n\n"
     "KvmFd._ioctl, compiled: what to set as the method. It issues in one C call an ioctl whose gate was\n"
     "passed, with an int argument or a cdata pointer of known room; anything else goes to\n"
     "fallback(obj, name, arg), the Python method."},
    {"ioctl", (PyCFunction)(void (*)(void))speedups_ioctl, METH_FASTCALL,
     "ioctl(fd, request, value) -> result, or -errno on failure: `value` passed by value (the GIL\n"
     "is released during the call)."},
    {NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kvm._speedups",
    .m_doc = "The compiled fast path of kvm's run loop (see kvm/_pure.py for the pure-Python twin).",
    .m_size = -1,
    .m_methods = speedups_functions,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&RunnerType) < 0 || PyType_Ready(&VcpuBaseType) < 0 || PyType_Ready(&ExitBaseType) < 0 ||
        PyType_Ready(&FieldType) < 0 || PyType_Ready(&ValueIoctlType) < 0 || PyType_Ready(&IoctlMethodType) < 0)
        return NULL;
    str_users = PyUnicode_InternFromString("_users");
    str_fd = PyUnicode_InternFromString("_fd");
    str_passed = PyUnicode_InternFromString("_passed");
    str_closing_fd = PyUnicode_InternFromString("_closing_fd");
    str_close_deferred = PyUnicode_InternFromString("_close_deferred");
    str_fd_kind = PyUnicode_InternFromString("fd_kind");
    str_errno = PyUnicode_InternFromString("errno");
    str_remove = PyUnicode_InternFromString("remove");
    if (!str_users || !str_fd || !str_passed || !str_closing_fd || !str_close_deferred || !str_fd_kind || !str_errno ||
        !str_remove)
        return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Runner", (PyObject *)&RunnerType) < 0 ||
        PyModule_AddObjectRef(module, "VcpuBase", (PyObject *)&VcpuBaseType) < 0 ||
        PyModule_AddObjectRef(module, "ExitBase", (PyObject *)&ExitBaseType) < 0 ||
        PyModule_AddObjectRef(module, "Field", (PyObject *)&FieldType) < 0 ||
        PyModule_AddObjectRef(module, "ValueIoctl", (PyObject *)&ValueIoctlType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
