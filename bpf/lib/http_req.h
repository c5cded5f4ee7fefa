/* A request header in one segment, read the way the front-end's engine (httptools) reads it, or
 * not at all: the kernel path takes only the plainest requests and leaves everything else to the
 * engine untouched (DESIGN.md §10). Taken: `GET` or `HEAD`, an origin-form target (`/...`, not
 * `//`) of unreserved, sub-delim, ':', '@', '/' and '?' characters, HTTP/1.1 or HTTP/1.0, header
 * names of token characters, values of visible ASCII, SP and HTAB, every line ending in CRLF, the
 * blank line ending exactly where the segment ends (no body, no pipelining). Left to Python: a
 * body or a framing header (Content-Length, Transfer-Encoding, Upgrade: recognised by length and
 * first letter, so a look-alike is left too), a second Host, a Host with spaces, a bracket or two
 * colons, a Connection other than close or keep-alive, folded lines, '%' or '#' in the target,
 * any other byte.
 *
 * One byte per bpf_loop step, a state machine: the verifier sees the step once, whatever the
 * request's length (see struct http_req). The verdict is a set of offsets into the buffer (the frame). */
#ifndef MIRESGA_HTTP_REQ_H
#define MIRESGA_HTTP_REQ_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "frontend.h"

#define REQ_MASK (FE_HELD_BUF - 1)
#define REQ_AT(b, i) ((b)[(i) & REQ_MASK])
#define REQ_FIELDS_MAX 100

enum req_state {
	RS_METHOD = 0, RS_TARGET0, RS_TARGET1, RS_PATH, RS_QUERY, RS_VERSION, RS_LF, RS_LINE, RS_NAME,
	RS_OWS, RS_VALUE, RS_END_LF,
};

enum req_field { RF_OTHER = 0, RF_HOST, RF_CONNECTION };

/* The parser's state. It lives in a per-CPU map value, not on the stack: the verifier does not
 * track what a map value holds, so every step starts from the same state for it and the step
 * is verified once (on the stack, each step's different counters would be explored one by one). */
struct http_req {
	__u32 start;      /* where the payload starts: step n reads byte start + n */
	__u32 end;        /* end of the payload */
	__u32 state;
	__u32 tok;        /* method bytes; version bytes seen; name length */
	__u64 acc;        /* method or version, shifted in */
	__u32 line;       /* start of the current header line */
	__u32 val_off;
	__u32 colons, colon_at;
	__u32 path_off, path_len;
	__u32 host_off, host_len;
	__u32 conn_off, conn_len;
	__u32 fields;
	__u8 method;      /* FE_M_GET or FE_M_HEAD */
	__u8 http10;
	__u8 field;       /* enum req_field of the current line */
	__u8 seen_host;
	__u8 seen_conn;
	__u8 bad;         /* leave it to Python */
	__u8 done;
};

/* bpf_loop's context must be on the stack: the buffer and the state, by pointer. */
struct req_walk {
	__u8 *buf; /* the frame (FE_HELD_BUF bytes) */
	struct http_req *r;
};

static __always_inline __u8 req_lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static __always_inline int req_alnum(__u8 c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static __always_inline int req_tchar(__u8 c)
{
	if (req_alnum(c))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
	case '.': case '^': case '_': case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

static __always_inline int req_target_char(__u8 c)
{
	if (req_alnum(c))
		return 1;
	switch (c) {
	case '-': case '.': case '_': case '~': case '!': case '$': case '&': case '\'': case '(':
	case ')': case '*': case '+': case ',': case ';': case '=': case ':': case '@': case '/':
		return 1;
	}
	return 0;
}

/* Does the buffer at `at` hold `word` (lower-case, n bytes), case-insensitively? */
static __always_inline int req_word_is(__u8 *b, __u32 at, const char *word, __u32 n)
{
#pragma unroll
	for (__u32 k = 0; k < 10; k++) {
		if (k < n && req_lower(REQ_AT(b, at + k)) != (__u8)word[k])
			return 0;
	}
	return 1;
}

/* The header name that ends here: what the kernel must know of it. */
static __always_inline int req_classify(__u8 *buf, struct http_req *r)
{
	__u32 n = r->tok;
	__u8 first = req_lower(REQ_AT(buf, r->line));

	if (n == 4 && first == 'h' && req_word_is(buf, r->line, "host", 4))
		return RF_HOST;
	if (n == 10 && first == 'c' && req_word_is(buf, r->line, "connection", 10))
		return RF_CONNECTION;
	if ((n == 14 && first == 'c') || (n == 17 && first == 't') || (n == 7 && first == 'u'))
		return -1; /* Content-Length, Transfer-Encoding, Upgrade (or a look-alike) */
	return RF_OTHER;
}

static __always_inline long req_bad(struct http_req *r)
{
	r->bad = 1;
	return 1;
}

/* The end of a header value at position i. */
static __always_inline long req_value_end(struct http_req *r, __u32 i)
{
	if (r->field == RF_HOST) {
		if (r->seen_host)
			return req_bad(r); /* a second Host: the engine joins them */
		r->seen_host = 1;
		r->host_off = r->val_off;
		r->host_len = i - r->val_off;
		if (r->colons > 1)
			return req_bad(r);
		if (r->colons == 1)
			r->host_len = r->colon_at - r->val_off; /* host:port */
	} else if (r->field == RF_CONNECTION) {
		if (r->seen_conn)
			return req_bad(r);
		r->seen_conn = 1;
		r->conn_off = r->val_off;
		r->conn_len = i - r->val_off;
	}
	r->state = RS_LF;
	return 0;
}

/* One byte per call (bpf_loop): 0 = go on, 1 = stop. */
static long http_req_step(__u32 n, void *ctx)
{
	struct req_walk *w = ctx;
	struct http_req *r = w->r;
	__u32 i = r->start + n;
	__u8 c;
	int f;

	if (i >= r->end)
		return req_bad(r); /* the blank line is not in this segment */
	c = REQ_AT(w->buf, i);
	switch (r->state) {
	case RS_METHOD:
		if (c == ' ') {
			if (r->acc == 0x474554)          /* GET */
				r->method = FE_M_GET;
			else if (r->acc == 0x48454144)   /* HEAD */
				r->method = FE_M_HEAD;
			else
				return req_bad(r);
			r->state = RS_TARGET0;
			return 0;
		}
		if (c < 'A' || c > 'Z' || ++r->tok > 7)
			return req_bad(r);
		r->acc = (r->acc << 8) | c;
		return 0;
	case RS_TARGET0:
		if (c != '/')
			return req_bad(r); /* absolute-form, '*' */
		r->path_off = i;
		r->state = RS_TARGET1;
		return 0;
	case RS_TARGET1:
		if (c == '/')
			return req_bad(r); /* '//' reads as an authority */
		r->state = RS_PATH;
		/* fall through */
	case RS_PATH:
		if (c == ' ' || c == '?') {
			r->path_len = i - r->path_off;
			r->state = c == ' ' ? RS_VERSION : RS_QUERY;
			r->tok = 0;
			r->acc = 0;
			return 0;
		}
		return req_target_char(c) ? 0 : req_bad(r);
	case RS_QUERY:
		if (c == ' ') {
			r->state = RS_VERSION;
			return 0;
		}
		return (req_target_char(c) || c == '?') ? 0 : req_bad(r);
	case RS_VERSION:
		if (c == '\r') {
			if (r->tok != 8)
				return req_bad(r);
			if (r->acc == 0x485454502F312E31ULL)        /* HTTP/1.1 */
				r->http10 = 0;
			else if (r->acc == 0x485454502F312E30ULL)   /* HTTP/1.0 */
				r->http10 = 1;
			else
				return req_bad(r);
			r->state = RS_LF;
			return 0;
		}
		if (++r->tok > 8)
			return req_bad(r);
		r->acc = (r->acc << 8) | c;
		return 0;
	case RS_LF:
		if (c != '\n')
			return req_bad(r);
		r->state = RS_LINE;
		return 0;
	case RS_LINE:
		if (c == '\r') {
			r->state = RS_END_LF;
			return 0;
		}
		if (!req_tchar(c) || ++r->fields > REQ_FIELDS_MAX)
			return req_bad(r); /* a folded line, junk, or many fields */
		r->line = i;
		r->tok = 1;
		r->state = RS_NAME;
		return 0;
	case RS_NAME:
		if (c == ':') {
			f = req_classify(w->buf, r);
			if (f < 0)
				return req_bad(r);
			r->field = f;
			r->state = RS_OWS;
			return 0;
		}
		if (!req_tchar(c))
			return req_bad(r);
		r->tok++;
		return 0;
	case RS_OWS:
		if (c == ' ' || c == '\t')
			return 0;
		if (c == '\r') {
			if (r->field != RF_OTHER)
				return req_bad(r); /* an empty Host or Connection */
			r->state = RS_LF;
			return 0;
		}
		r->val_off = i;
		r->colons = 0;
		r->state = RS_VALUE;
		/* fall through */
	case RS_VALUE:
		if (c == '\r')
			return req_value_end(r, i);
		if (c == ' ' || c == '\t')
			return r->field == RF_OTHER ? 0 : req_bad(r);
		if (c < 0x21 || c > 0x7E)
			return req_bad(r);
		if (r->field == RF_HOST) {
			if (c == '[')
				return req_bad(r);
			if (c == ':') {
				r->colons++;
				r->colon_at = i;
			}
		}
		return 0;
	case RS_END_LF:
		if (c != '\n' || i + 1 != r->end)
			return req_bad(r); /* a body or a second request follows */
		r->done = 1;
		return 1;
	}
	return req_bad(r);
}

/* Parse the payload at [off, end) of the frame in buf. 0: a request the kernel may route, with
 * r's offsets set; -1: leave it to Python. */
static __always_inline int http_req_parse(struct http_req *r, __u8 *buf, __u32 off, __u32 end)
{
	struct req_walk w = { .buf = buf, .r = r };

	__builtin_memset(r, 0, sizeof(*r));
	r->start = off;
	r->end = end;
	if (end <= off || end > FE_HELD_MAX)
		return -1;
	bpf_loop(FE_HELD_MAX, http_req_step, &w, 0);
	if (!r->done || r->bad)
		return -1;
	if (r->seen_conn) {
		if (r->conn_len == 5 && req_word_is(buf, r->conn_off, "close", 5))
			return 0;
		if (r->conn_len == 10 && req_word_is(buf, r->conn_off, "keep-alive", 10))
			return 0;
		return -1;
	}
	return 0;
}

/* FE_REQ_* flags of a parsed request. */
static __always_inline __u32 http_req_flags(struct http_req *r)
{
	__u32 close = 0, keep = 0;

	if (r->seen_conn) {
		close = r->conn_len == 5;
		keep = r->conn_len == 10;
	}
	if (r->http10 && !keep)
		close = 1;
	return (close ? FE_REQ_CLOSE : 0) | (r->http10 ? FE_REQ_HTTP10 : 0) | (keep ? FE_REQ_KEEP : 0);
}

#endif
