/* clamdcore: the message handed to clamd, each step in one call with the GIL released once.
 *
 * anonymous_file mirrors stronghold/spool.py's _anonymous_file_py: a new memfd holding the
 * message, positioned at 0 (create, write, seek: three GIL releases in Python).
 *
 * fildes_send and fildes_reply mirror stronghold/antivirus.py's _fildes_send_py and
 * _fildes_reply_py: connect to clamd's unix socket, send "zFILDES\0", pass the message's
 * descriptor with one NUL byte (SCM_RIGHTS); later, read the NUL-terminated reply (at most
 * REPLY_MAX bytes, or what came before clamd closed).  The Python versions let the GIL go
 * at every socket call (about ten per message), and each time another connection thread
 * may take it: under load the hand-overs cost more than the exchange itself.  Here each
 * half runs without the GIL.  Two halves, so that clamd scans while the caller parses.
 *
 * timeout > 0: each blocking step (connect, each send, each read) waits at most that many
 * seconds, as a Python socket with settimeout does; 0: no limit.
 */
#define _GNU_SOURCE /* memfd_create */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define REPLY_MAX 4096

static const char COMMAND[] = "zFILDES"; /* sent with its terminating NUL */

/* Send all of buf; 0 or an errno value. */
static int send_all(int sock, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t sent = send(sock, buf, n, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        buf += sent;
        n -= (size_t)sent;
    }
    return 0;
}

/* One NUL byte carrying the descriptor; 0 or an errno value. */
static int send_descriptor(int sock, int fd) {
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof(control.space);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    for (;;) {
        ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (sent == 1)
            return 0;
        if (sent < 0 && errno == EINTR)
            continue;
        return sent < 0 ? errno : EIO;
    }
}

/* The reply into out (up to REPLY_MAX bytes): read until it ends with NUL, is full, or
 * clamd closes; *got is its length.  0 or an errno value. */
static int read_reply(int sock, char *out, size_t *got) {
    size_t n = 0;
    while (n < REPLY_MAX && (n == 0 || out[n - 1] != '\0')) {
        ssize_t r = recv(sock, out + n, REPLY_MAX - n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *got = n;
    return 0;
}

/* Connect and hand over the descriptor, no Python inside; the connected socket, or -1 with
 * *err set (EAGAIN: a step timed out).  The timeouts stay on the socket for the reply. */
static int send_request(const struct sockaddr_un *addr, int fd, double timeout, int *err) {
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        *err = errno;
        return -1;
    }
    int e = 0;
    if (timeout > 0) {
        struct timeval tv;
        tv.tv_sec = (time_t)timeout;
        tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
        if (tv.tv_sec == 0 && tv.tv_usec == 0)
            tv.tv_usec = 1; /* a zero timeval would mean: no limit */
        if (setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
            setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
            e = errno;
    }
    if (!e) {
        while (connect(sock, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
            if (errno != EINTR) {
                e = errno;
                break;
            }
        }
    }
    if (!e)
        e = send_all(sock, COMMAND, sizeof(COMMAND)); /* with its NUL */
    if (!e)
        e = send_descriptor(sock, fd);
    if (e) {
        close(sock);
        *err = e;
        return -1;
    }
    return sock;
}

/* OSError (TimeoutError for a step that timed out) for an errno value from the steps above. */
static PyObject *raise_for(int err) {
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS) {
        PyErr_SetString(PyExc_TimeoutError, "timed out");
        return NULL;
    }
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *fildes_send(PyObject *module, PyObject *args) {
    (void)module;
    const char *path;
    Py_ssize_t path_len;
    int fd;
    double timeout;
    if (!PyArg_ParseTuple(args, "s#id:fildes_send", &path, &path_len, &fd, &timeout))
        return NULL;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (path_len <= 0 || (size_t)path_len >= sizeof(addr.sun_path)) { /* as connect() would say */
        errno = path_len <= 0 ? ENOENT : ENAMETOOLONG;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "no descriptor to pass");
        return NULL;
    }
    memcpy(addr.sun_path, path, (size_t)path_len);
    int err = 0, sock;
    Py_BEGIN_ALLOW_THREADS
    sock = send_request(&addr, fd, timeout, &err);
    Py_END_ALLOW_THREADS
    if (sock < 0)
        return raise_for(err);
    PyObject *result = PyLong_FromLong(sock);
    if (result == NULL)
        close(sock); /* nobody else could */
    return result;
}

static PyObject *fildes_reply(PyObject *module, PyObject *arg) {
    (void)module;
    long sock = PyLong_AsLong(arg);
    if (sock == -1 && PyErr_Occurred())
        return NULL;
    if (sock < 0 || sock > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a socket from fildes_send");
        return NULL;
    }
    char *out = PyMem_RawMalloc(REPLY_MAX);
    if (out == NULL) {
        close((int)sock); /* it is ours to close whatever happens */
        return PyErr_NoMemory();
    }
    size_t got = 0;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = read_reply((int)sock, out, &got);
    close((int)sock);
    Py_END_ALLOW_THREADS
    PyObject *result = err ? raise_for(err) : PyBytes_FromStringAndSize(out, (Py_ssize_t)got);
    PyMem_RawFree(out);
    return result;
}

/* A memfd holding buf, at position 0; -1 with *err set on failure (no descriptor left open). */
static int memfd_holding(const char *buf, size_t n, int *err) {
    int fd = memfd_create("stronghold-spool", MFD_CLOEXEC);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            close(fd);
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    if (lseek(fd, 0, SEEK_SET) < 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    return fd;
}

static PyObject *anonymous_file(PyObject *module, PyObject *data) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int err = 0, fd;
    Py_BEGIN_ALLOW_THREADS /* the exported buffer cannot be resized meanwhile */
    fd = memfd_holding(view.buf, (size_t)view.len, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (fd < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyLong_FromLong(fd);
    if (result == NULL)
        close(fd); /* nobody else could */
    return result;
}

static PyMethodDef methods[] = {
    {"anonymous_file", anonymous_file, METH_O,
     PyDoc_STR("anonymous_file(data) -> fd: a new memfd (close-on-exec) holding data, at position 0")},
    {"fildes_send", fildes_send, METH_VARARGS,
     PyDoc_STR("fildes_send(path, fd, timeout) -> socket: connected to clamd, FILDES sent with fd "
               "(timeout seconds per step, 0: none, kept for the reply); OSError, TimeoutError")},
    {"fildes_reply", fildes_reply, METH_O,
     PyDoc_STR("fildes_reply(socket) -> bytes: clamd's raw reply on a socket from fildes_send, "
               "which is closed whatever happens; OSError, TimeoutError")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clamdcore", "the message handed to clamd without the GIL", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__clamdcore(void) {
    return PyModule_Create(&module);
}
