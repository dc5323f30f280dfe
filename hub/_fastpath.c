/* The fan-out's per-copy work in C: rewrite, SRTP-protect and send one packet to
 * every subscriber in one call from Python; and SRTP-unprotect what publishers send.
 * hub/_fastpath_py.py is the same in Python, used when this could not be built;
 * tests/test_fastpath.py holds the two to the same behaviour. Python's per-copy
 * overhead (frames, allocations, the event loop's sendto wrapper) was about a third
 * of the hub's time per forwarded packet. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

/* libsrtp's srtp_protect, srtp_unprotect and their _rtcp twins: (context, buffer,
 * in/out length). */
typedef int (*libsrtp_fn)(void *ctx, void *buffer, int *length);

#define BUFFER_SIZE 1500
#define HEADER_SIZE 12
#define EXTENSION_SIZE 8 /* one-byte header extension, one word: abs-send-time */

static libsrtp_fn protect_rtp = NULL;
static libsrtp_fn protect_rtcp = NULL;
static int max_rtp_plain = 0;
static int max_rtcp_plain = 0;
static libsrtp_fn unprotect_rtp = NULL;
static libsrtp_fn unprotect_rtcp = NULL;

/* ---- SrtpSocket ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    void *ctx;
    PyObject *keep; /* owns the libsrtp context ctx points into */
    PyObject *sock; /* owns fd */
    int fd;
    unsigned long long socket_id; /* the socket's inode: dup'ed descriptors share it */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} SrtpSocket;

static PyTypeObject SrtpSocketType;

static void
srtp_socket_release(SrtpSocket *self)
{
    self->ctx = NULL;
    self->fd = -1;
    self->socket_id = 0;
    Py_CLEAR(self->keep);
    Py_CLEAR(self->sock);
}

static int
srtp_socket_init(SrtpSocket *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":SrtpSocket", kwlist)) {
        return -1;
    }
    srtp_socket_release(self);
    return 0;
}

static void
srtp_socket_dealloc(SrtpSocket *self)
{
    PyObject_GC_UnTrack(self);
    srtp_socket_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
srtp_socket_traverse(SrtpSocket *self, visitproc visit, void *arg)
{
    Py_VISIT(self->keep);
    Py_VISIT(self->sock);
    return 0;
}

static int
srtp_socket_clear(SrtpSocket *self)
{
    srtp_socket_release(self);
    return 0;
}

static PyObject *
srtp_socket_aim(SrtpSocket *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", "keep", "sock", "host", "port", NULL};
    unsigned long long ctx;
    PyObject *keep, *sock;
    const char *host;
    int port;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "KOOsi:aim", kwlist, &ctx, &keep, &sock, &host, &port)) {
        return NULL;
    }
    if (protect_rtp == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "hub._fastpath.configure() was not called");
        return NULL;
    }
    PyObject *fileno = PyObject_CallMethod(sock, "fileno", NULL);
    if (fileno == NULL) {
        return NULL;
    }
    long fd = PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "socket is closed");
        return NULL;
    }
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {0}, *found = NULL;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int error = getaddrinfo(host, service, &hints, &found);
    if (error != 0 || found == NULL) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s (%s)", host,
                     gai_strerror(error));
        return NULL;
    }
    struct stat status;
    if (fstat((int)fd, &status) != 0) {
        freeaddrinfo(found);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    srtp_socket_release(self);
    self->socket_id = (unsigned long long)status.st_ino;
    memcpy(&self->addr, found->ai_addr, found->ai_addrlen);
    self->addrlen = found->ai_addrlen;
    freeaddrinfo(found);
    self->ctx = (void *)(uintptr_t)ctx;
    self->fd = (int)fd;
    Py_INCREF(keep);
    self->keep = keep;
    Py_INCREF(sock);
    self->sock = sock;
    Py_RETURN_NONE;
}

static PyObject *
srtp_socket_close(SrtpSocket *self, PyObject *Py_UNUSED(ignored))
{
    srtp_socket_release(self);
    Py_RETURN_NONE;
}

/* Run libsrtp's ``fn`` with context ``ctx`` on the ``length`` bytes in ``buffer``, in
 * place: the resulting length, or -1 when there is no context or libsrtp refused. */
static int
through(void *ctx, libsrtp_fn fn, unsigned char *buffer, int length)
{
    if (ctx == NULL || fn(ctx, buffer, &length) != 0) {
        return -1;
    }
    return length;
}

static void
transmit(SrtpSocket *self, const unsigned char *buffer, int length)
{
    /* UDP: a full socket buffer or an ICMP error loses this packet, as on the wire. */
    (void)sendto(self->fd, buffer, (size_t)length, MSG_DONTWAIT,
                 (const struct sockaddr *)&self->addr, self->addrlen);
}

static PyObject *
srtp_socket_send_with(SrtpSocket *self, PyObject *arg, libsrtp_fn protect, int max_plain)
{
    Py_buffer data;
    unsigned char buffer[BUFFER_SIZE];
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int length = -1;
    if (data.len <= max_plain) {
        memcpy(buffer, data.buf, (size_t)data.len);
        length = through(self->ctx, protect, buffer, (int)data.len);
    }
    PyBuffer_Release(&data);
    if (length < 0) {
        Py_RETURN_FALSE;
    }
    transmit(self, buffer, length);
    Py_RETURN_TRUE;
}

static PyObject *
srtp_socket_send(SrtpSocket *self, PyObject *arg)
{
    return srtp_socket_send_with(self, arg, protect_rtp, max_rtp_plain);
}

static PyObject *
srtp_socket_send_rtcp(SrtpSocket *self, PyObject *arg)
{
    return srtp_socket_send_with(self, arg, protect_rtcp, max_rtcp_plain);
}

static PyObject *
srtp_socket_get_open(SrtpSocket *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->ctx != NULL);
}

static PyMethodDef srtp_socket_methods[] = {
    {"aim", (PyCFunction)(void (*)(void))srtp_socket_aim, METH_VARARGS | METH_KEYWORDS,
     "Send from now on through ``sock`` to (host, port), protected with libsrtp "
     "context ``ctx`` (an address; ``keep`` owns it)."},
    {"close", (PyCFunction)srtp_socket_close, METH_NOARGS,
     "Stop sending; drop the references to the context and the socket."},
    {"send", (PyCFunction)srtp_socket_send, METH_O,
     "Protect (SRTP) and send one RTP packet; False when it cannot be sent."},
    {"send_rtcp", (PyCFunction)srtp_socket_send_rtcp, METH_O,
     "Protect (SRTCP) and send one compound RTCP packet; False when it cannot."},
    {NULL},
};

static PyGetSetDef srtp_socket_getset[] = {
    {"open", (getter)srtp_socket_get_open, NULL, "Aimed and not closed.", NULL},
    {NULL},
};

static PyTypeObject SrtpSocketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hub._fastpath.SrtpSocket",
    .tp_doc = "SRTP-protect and send to one address through one socket.",
    .tp_basicsize = sizeof(SrtpSocket),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)srtp_socket_init,
    .tp_dealloc = (destructor)srtp_socket_dealloc,
    .tp_traverse = (traverseproc)srtp_socket_traverse,
    .tp_clear = (inquiry)srtp_socket_clear,
    .tp_methods = srtp_socket_methods,
    .tp_getset = srtp_socket_getset,
};

/* ---- DownTrackCore -------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *srtp_socket; /* SrtpSocket or NULL */
    uint32_t ssrc;
    char video;
    int payload_type;     /* -1: none negotiated */
    int abs_send_time_id; /* 0: none negotiated */
    uint16_t next_seq;
    uint32_t last_timestamp;
    unsigned long long packets_sent;
    unsigned long long bytes_sent;
    /* The bound subscription's rewriting. */
    char started;
    uint16_t first_seq;
    uint16_t seq_offset;
    uint32_t ts_offset;
    /* Sender Report figures, as of the last 8th packet: a consistent snapshot. */
    uint32_t report_timestamp;
    unsigned long long report_ntp;
    unsigned long long report_packets;
    unsigned long long report_bytes;
} DownTrackCore;

static PyTypeObject DownTrackCoreType;

static int
down_init(DownTrackCore *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"video", "ssrc", NULL};
    int video;
    unsigned long ssrc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "pk:DownTrackCore", kwlist, &video, &ssrc)) {
        return -1;
    }
    if (ssrc > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "ssrc must fit in 32 bits");
        return -1;
    }
    Py_CLEAR(self->srtp_socket);
    self->ssrc = (uint32_t)ssrc;
    self->video = (char)video;
    self->payload_type = -1;
    self->abs_send_time_id = 0;
    /* Start below 32768 so SRTP's rollover guess cannot go wrong early on. */
    self->next_seq = (uint16_t)(ssrc & 0x7FFF);
    self->last_timestamp = (uint32_t)(ssrc * 2654435761UL);
    self->packets_sent = self->bytes_sent = 0;
    self->started = 0;
    self->first_seq = self->seq_offset = 0;
    self->ts_offset = 0;
    self->report_timestamp = 0;
    self->report_ntp = self->report_packets = self->report_bytes = 0;
    return 0;
}

static void
down_dealloc(DownTrackCore *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->srtp_socket);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
down_traverse(DownTrackCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->srtp_socket);
    return 0;
}

static int
down_clear(DownTrackCore *self)
{
    Py_CLEAR(self->srtp_socket);
    return 0;
}

static PyObject *
down_get_srtp_socket(DownTrackCore *self, void *Py_UNUSED(closure))
{
    if (self->srtp_socket == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->srtp_socket);
    return self->srtp_socket;
}

static int
down_set_srtp_socket(DownTrackCore *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->srtp_socket);
        return 0;
    }
    if (!PyObject_TypeCheck(value, &SrtpSocketType)) {
        PyErr_SetString(PyExc_TypeError, "srtp_socket must be an SrtpSocket or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->srtp_socket, value);
    return 0;
}

static PyObject *
down_get_report(DownTrackCore *self, void *Py_UNUSED(closure))
{
    if (self->report_packets == 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(kKKK)", (unsigned long)self->report_timestamp, self->report_ntp,
                         self->report_packets, self->report_bytes);
}

static SrtpSocket *
down_target(DownTrackCore *self)
{
    SrtpSocket *target = (SrtpSocket *)self->srtp_socket;
    if (self->payload_type < 0 || target == NULL || target->ctx == NULL) {
        return NULL;
    }
    return target;
}

static PyObject *
down_get_ready(DownTrackCore *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(down_target(self) != NULL);
}

/* Write this track's header and ``payload`` into ``buffer`` and protect it: the
 * protected length, or -1. Counts the packet when it was sealed. */
static int
down_seal(DownTrackCore *self, SrtpSocket *target, unsigned char *buffer, uint16_t seq,
          uint32_t timestamp, int marker, const unsigned char *payload, Py_ssize_t size,
          unsigned long long ntp, const unsigned char *abs3, unsigned long long *plain)
{
    int header = HEADER_SIZE + (self->abs_send_time_id ? EXTENSION_SIZE : 0);
    if (size > max_rtp_plain - header) {
        return -1;
    }
    buffer[0] = self->abs_send_time_id ? 0x90 : 0x80;
    buffer[1] = (unsigned char)((marker ? 0x80 : 0) | (self->payload_type & 0x7F));
    buffer[2] = (unsigned char)(seq >> 8);
    buffer[3] = (unsigned char)seq;
    buffer[4] = (unsigned char)(timestamp >> 24);
    buffer[5] = (unsigned char)(timestamp >> 16);
    buffer[6] = (unsigned char)(timestamp >> 8);
    buffer[7] = (unsigned char)timestamp;
    buffer[8] = (unsigned char)(self->ssrc >> 24);
    buffer[9] = (unsigned char)(self->ssrc >> 16);
    buffer[10] = (unsigned char)(self->ssrc >> 8);
    buffer[11] = (unsigned char)self->ssrc;
    if (self->abs_send_time_id) {
        static const unsigned char profile[4] = {0xBE, 0xDE, 0x00, 0x01};
        memcpy(buffer + 12, profile, 4);
        buffer[16] = (unsigned char)((self->abs_send_time_id << 4) | 2);
        memcpy(buffer + 17, abs3, 3);
    }
    memcpy(buffer + header, payload, (size_t)size);
    int length = through(target->ctx, protect_rtp, buffer, header + (int)size);
    if (length < 0) {
        return -1;
    }
    self->packets_sent += 1;
    self->bytes_sent += (unsigned long long)size;
    *plain += (unsigned long long)(header + size);
    if (!(self->packets_sent & 7)) {
        self->report_timestamp = timestamp;
        self->report_ntp = ntp;
        self->report_packets = self->packets_sent;
        self->report_bytes = self->bytes_sent;
    }
    return length;
}

static int
parse_abs3(Py_buffer *abs3)
{
    if (abs3->len != 3) {
        PyErr_SetString(PyExc_ValueError, "abs3 must be 3 bytes");
        return -1;
    }
    return 0;
}

static PyObject *
down_write(DownTrackCore *self, PyObject *args)
{
    unsigned int seq, timestamp;
    int marker;
    unsigned long long ntp;
    Py_buffer payload, abs3;
    if (!PyArg_ParseTuple(args, "IIpy*Ky*:write", &seq, &timestamp, &marker, &payload, &ntp,
                          &abs3)) {
        return NULL;
    }
    PyObject *result = NULL;
    unsigned char buffer[BUFFER_SIZE];
    unsigned long long plain = 0;
    if (parse_abs3(&abs3) == 0) {
        SrtpSocket *target = down_target(self);
        int length = -1;
        if (target != NULL) {
            length = down_seal(self, target, buffer, (uint16_t)seq, (uint32_t)timestamp, marker,
                               payload.buf, payload.len, ntp, abs3.buf, &plain);
        }
        if (length >= 0) {
            transmit(target, buffer, length);
        }
        result = PyLong_FromLong(length < 0 ? -1 : (long)plain);
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&abs3);
    return result;
}

static PyMemberDef down_members[] = {
    {"ssrc", T_UINT, offsetof(DownTrackCore, ssrc), READONLY, NULL},
    {"video", T_BOOL, offsetof(DownTrackCore, video), READONLY, NULL},
    {"payload_type", T_INT, offsetof(DownTrackCore, payload_type), 0, NULL},
    {"abs_send_time_id", T_INT, offsetof(DownTrackCore, abs_send_time_id), 0, NULL},
    {"next_seq", T_USHORT, offsetof(DownTrackCore, next_seq), 0, NULL},
    {"last_timestamp", T_UINT, offsetof(DownTrackCore, last_timestamp), 0, NULL},
    {"packets_sent", T_ULONGLONG, offsetof(DownTrackCore, packets_sent), 0, NULL},
    {"bytes_sent", T_ULONGLONG, offsetof(DownTrackCore, bytes_sent), 0, NULL},
    {"started", T_BOOL, offsetof(DownTrackCore, started), 0, NULL},
    {"first_seq", T_USHORT, offsetof(DownTrackCore, first_seq), 0, NULL},
    {"seq_offset", T_USHORT, offsetof(DownTrackCore, seq_offset), 0, NULL},
    {"ts_offset", T_UINT, offsetof(DownTrackCore, ts_offset), 0, NULL},
    {NULL},
};

static PyGetSetDef down_getset[] = {
    {"srtp_socket", (getter)down_get_srtp_socket, (setter)down_set_srtp_socket, NULL, NULL},
    {"report", (getter)down_get_report, NULL, NULL, NULL},
    {"ready", (getter)down_get_ready, NULL, NULL, NULL},
    {NULL},
};

static PyMethodDef down_methods[] = {
    {"write", (PyCFunction)down_write, METH_VARARGS,
     "write(seq, timestamp, marker, payload, ntp, abs3): send one packet with this "
     "track's header; the bytes sent before SRTP, or -1."},
    {NULL},
};

static PyTypeObject DownTrackCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hub._fastpath.DownTrackCore",
    .tp_doc = "A down track's sending state, and its bound subscription's rewriting.",
    .tp_basicsize = sizeof(DownTrackCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)down_init,
    .tp_dealloc = (destructor)down_dealloc,
    .tp_traverse = (traverseproc)down_traverse,
    .tp_clear = (inquiry)down_clear,
    .tp_members = down_members,
    .tp_getset = down_getset,
    .tp_methods = down_methods,
};

/* ---- fanout --------------------------------------------------------------- */

/* The sealed copies of one packet wait here until all are sealed: then the sends
 * run back to back, the kernel's send path warm, and the copies that leave the same
 * socket (HUB_UDP_PORT: all of them) leave in one sendmmsg call. */
static unsigned char *batch = NULL;
static SrtpSocket **batch_targets = NULL;
static int *batch_lengths = NULL;
static struct mmsghdr *batch_messages = NULL;
static struct iovec *batch_iovecs = NULL;
static Py_ssize_t batch_capacity = 0;

/* Copies sent per sendmmsg call at most (the kernel's UIO_MAXIOV). */
#define MAX_MESSAGES 1024

static int
reserve_batch(Py_ssize_t count)
{
    if (count <= batch_capacity) {
        return 0;
    }
    Py_ssize_t capacity = count < 64 ? 64 : count * 2;
    unsigned char *b = PyMem_Realloc(batch, (size_t)capacity * BUFFER_SIZE);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    batch = b;
    SrtpSocket **t = PyMem_Realloc(batch_targets, (size_t)capacity * sizeof(SrtpSocket *));
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    batch_targets = t;
    int *l = PyMem_Realloc(batch_lengths, (size_t)capacity * sizeof(int));
    if (l == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    batch_lengths = l;
    struct mmsghdr *m = PyMem_Realloc(batch_messages, (size_t)capacity * sizeof(struct mmsghdr));
    if (m == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    batch_messages = m;
    struct iovec *v = PyMem_Realloc(batch_iovecs, (size_t)capacity * sizeof(struct iovec));
    if (v == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    batch_iovecs = v;
    batch_capacity = capacity;
    return 0;
}

/* Send sealed copies first..end-1, which all leave the same socket, in sendmmsg
 * calls. A copy the kernel refuses (a full send buffer) is lost, as with sendto. */
static void
transmit_batch(Py_ssize_t first, Py_ssize_t end)
{
    for (Py_ssize_t i = first; i < end; i++) {
        SrtpSocket *target = batch_targets[i];
        batch_iovecs[i].iov_base = batch + i * BUFFER_SIZE;
        batch_iovecs[i].iov_len = (size_t)batch_lengths[i];
        struct msghdr *header = &batch_messages[i].msg_hdr;
        memset(header, 0, sizeof(*header));
        header->msg_name = &target->addr;
        header->msg_namelen = target->addrlen;
        header->msg_iov = &batch_iovecs[i];
        header->msg_iovlen = 1;
    }
    int fd = batch_targets[first]->fd;
    Py_ssize_t next = first;
    while (next < end) {
        Py_ssize_t count = end - next < MAX_MESSAGES ? end - next : MAX_MESSAGES;
        int sent = sendmmsg(fd, batch_messages + next, (unsigned int)count, MSG_DONTWAIT);
        next += sent > 0 ? sent : 1;
    }
}

static PyObject *
fanout(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *tracks;
    unsigned int seq_in, timestamp_in;
    int marker, keyframe;
    unsigned long long ntp;
    Py_buffer payload, abs3;
    if (!PyArg_ParseTuple(args, "O!IIpy*pKy*:fanout", &PyList_Type, &tracks, &seq_in,
                          &timestamp_in, &marker, &payload, &keyframe, &ntp, &abs3)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(tracks);
    if (parse_abs3(&abs3) < 0 || reserve_batch(count) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyObject_TypeCheck(PyList_GET_ITEM(tracks, i), &DownTrackCoreType)) {
            PyErr_SetString(PyExc_TypeError, "fanout() takes a list of DownTrackCore");
            goto done;
        }
    }
    uint16_t seq = (uint16_t)seq_in;
    uint32_t timestamp = (uint32_t)timestamp_in;
    Py_ssize_t sealed = 0;
    unsigned long long plain = 0;
    int wants_keyframe = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        DownTrackCore *down = (DownTrackCore *)PyList_GET_ITEM(tracks, i);
        SrtpSocket *target = down_target(down);
        if (!down->started) {
            if (target == NULL) {
                continue;
            }
            if (down->video && !keyframe) {
                wants_keyframe = 1;
                continue;
            }
            down->started = 1;
            down->first_seq = seq;
            down->seq_offset = (uint16_t)(down->next_seq - seq);
            /* Continue the slot's clock a little after its last packet. */
            uint32_t gap = down->video ? 3000 : 960;
            down->ts_offset = down->last_timestamp + gap - timestamp;
        } else if ((uint16_t)(seq - down->first_seq) & 0x8000) {
            continue; /* older than where this subscription started */
        }
        uint16_t out_seq = (uint16_t)(seq + down->seq_offset);
        uint32_t out_ts = timestamp + down->ts_offset;
        if (!((uint16_t)(out_seq - down->next_seq) & 0x8000)) {
            down->next_seq = (uint16_t)(out_seq + 1);
            down->last_timestamp = out_ts;
        }
        if (target == NULL) {
            continue;
        }
        unsigned char *buffer = batch + sealed * BUFFER_SIZE;
        int length = down_seal(down, target, buffer, out_seq, out_ts, marker, payload.buf,
                               payload.len, ntp, abs3.buf, &plain);
        if (length < 0) {
            continue;
        }
        batch_targets[sealed] = target;
        batch_lengths[sealed] = length;
        sealed++;
    }
    for (Py_ssize_t i = 0; i < sealed;) {
        Py_ssize_t end = i + 1;
        while (end < sealed && batch_targets[end]->socket_id == batch_targets[i]->socket_id) {
            end++;
        }
        if (end - i == 1) {
            transmit(batch_targets[i], batch + i * BUFFER_SIZE, batch_lengths[i]);
        } else {
            transmit_batch(i, end);
        }
        i = end;
    }
    result = Py_BuildValue("(nKO)", sealed, plain, wants_keyframe ? Py_True : Py_False);
done:
    PyBuffer_Release(&payload);
    PyBuffer_Release(&abs3);
    return result;
}

/* One received datagram through ``fn`` with the libsrtp context at address ``ctx``:
 * the plain packet, or None when it is over BUFFER_SIZE or libsrtp refuses it. */
static PyObject *
unprotect_with(PyObject *args, libsrtp_fn fn, const char *format)
{
    unsigned long long ctx;
    Py_buffer data;
    unsigned char buffer[BUFFER_SIZE];
    if (!PyArg_ParseTuple(args, format, &ctx, &data)) {
        return NULL;
    }
    if (fn == NULL || ctx == 0) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "no libsrtp context, or configure() not called");
        return NULL;
    }
    int length = -1;
    if (data.len <= BUFFER_SIZE) {
        memcpy(buffer, data.buf, (size_t)data.len);
        length = through((void *)(uintptr_t)ctx, fn, buffer, (int)data.len);
    }
    PyBuffer_Release(&data);
    if (length < 0) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)buffer, length);
}

static PyObject *
py_unprotect(PyObject *Py_UNUSED(module), PyObject *args)
{
    return unprotect_with(args, unprotect_rtp, "Ky*:unprotect");
}

static PyObject *
py_unprotect_rtcp(PyObject *Py_UNUSED(module), PyObject *args)
{
    return unprotect_with(args, unprotect_rtcp, "Ky*:unprotect_rtcp");
}

static PyObject *
configure(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"protect_rtp", "protect_rtcp", "max_rtp", "max_rtcp",
                             "unprotect_rtp", "unprotect_rtcp", NULL};
    unsigned long long rtp, rtcp, un_rtp, un_rtcp;
    int max_rtp, max_rtcp;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKiiKK:configure", kwlist, &rtp, &rtcp,
                                     &max_rtp, &max_rtcp, &un_rtp, &un_rtcp)) {
        return NULL;
    }
    if (rtp == 0 || rtcp == 0 || un_rtp == 0 || un_rtcp == 0 || max_rtp <= HEADER_SIZE ||
        max_rtp > BUFFER_SIZE || max_rtcp <= 8 || max_rtcp > BUFFER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "invalid libsrtp entry points or sizes");
        return NULL;
    }
    protect_rtp = (libsrtp_fn)(uintptr_t)rtp;
    protect_rtcp = (libsrtp_fn)(uintptr_t)rtcp;
    max_rtp_plain = max_rtp;
    max_rtcp_plain = max_rtcp;
    unprotect_rtp = (libsrtp_fn)(uintptr_t)un_rtp;
    unprotect_rtcp = (libsrtp_fn)(uintptr_t)un_rtcp;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"fanout", fanout, METH_VARARGS,
     "fanout(tracks, seq, timestamp, marker, payload, keyframe, ntp, abs3): send one "
     "packet to every ready down track; (copies sent, bytes before SRTP, wants keyframe)."},
    {"unprotect", py_unprotect, METH_VARARGS,
     "unprotect(ctx, data): the plain RTP packet, or None when libsrtp refuses it."},
    {"unprotect_rtcp", py_unprotect_rtcp, METH_VARARGS,
     "unprotect_rtcp(ctx, data): the plain RTCP packet, or None when refused."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Give libsrtp's protect and unprotect functions (addresses) and the largest plain "
     "packets protect can take."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hub._fastpath",
    .m_doc = "The fan-out's per-copy work in C (see hub/fastpath.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (PyType_Ready(&SrtpSocketType) < 0 || PyType_Ready(&DownTrackCoreType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "BUFFER_SIZE", BUFFER_SIZE) < 0 ||
        PyModule_AddObjectRef(m, "SrtpSocket", (PyObject *)&SrtpSocketType) < 0 ||
        PyModule_AddObjectRef(m, "DownTrackCore", (PyObject *)&DownTrackCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
