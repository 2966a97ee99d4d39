/*
 * pyxlio emulator: libxlio.conf transport rules.
 *
 *   use <os|vma|sdp|sa|*> <tcp_server|tcp_client|udp_sender|udp_receiver|udp_connect>
 *       <ip[/prefix]|*>:<port[-port]|*>[:<ip[/prefix]|*>:<port[-port]|*>]
 *
 * `use os` makes a matching socket not offloaded; any other transport offloads it.  Rules from
 * add_conf_rule go to the head of the list, config-file rules keep file order, first match
 * wins, and a rule only applies to sockets created after it.  One syntax error in
 * add_conf_rule poisons the parser: every later call returns 1, as in the real library.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emu.h"

#define ACCEPT_FILE "a readable regular file of at most 1048576 bytes"

typedef struct {
    int any;
    uint32_t addr, mask; /* host order */
} ip_match_t;

typedef struct {
    int any;
    unsigned lo, hi;
} port_match_t;

typedef struct {
    ip_match_t ip;
    port_match_t port;
} ap_match_t;

typedef struct {
    uint64_t seq;
    int os;
    int ignored;  /* sdp / sa: transports XLIO does not provide; it never matches them */
    int role;
    int npairs;
    ap_match_t a[2];
} rule_t;

static rule_t *g_added, *g_file; /* added: newest last (searched backwards) */
static int g_nadded, g_capadded, g_nfile, g_capfile;
static uint64_t g_seq;
static int g_poisoned;
static pthread_mutex_t g_rules_mu = PTHREAD_MUTEX_INITIALIZER;

static int parse_ip(const char *s, ip_match_t *m) {
    memset(m, 0, sizeof *m);
    if (!strcmp(s, "*")) { m->any = 1; return 0; }
    char buf[64];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    int prefix = 32;
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = 0;
        char *end;
        long p = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end || p < 0 || p > 32) return -1;
        prefix = (int)p;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1) return -1;
    m->mask = prefix ? 0xffffffffu << (32 - prefix) : 0;
    m->addr = ntohl(a.s_addr) & m->mask;
    return 0;
}

static int parse_port(const char *s, port_match_t *m) {
    memset(m, 0, sizeof *m);
    if (!strcmp(s, "*")) { m->any = 1; return 0; }
    char *end;
    long lo = strtol(s, &end, 10);
    if (end == s || lo < 0 || lo > 65535) return -1;
    long hi = lo;
    if (*end == '-') {
        const char *p = end + 1;
        hi = strtol(p, &end, 10);
        if (end == p || hi < lo || hi > 65535) return -1;
    }
    if (*end) return -1;
    m->lo = (unsigned)lo;
    m->hi = (unsigned)hi;
    return 0;
}

/* 0 ok, -1 syntax error (message in err) */
static int parse_rule(const char *line, rule_t *r, char *err, size_t errlen) {
    char buf[512];
    size_t n = strlen(line);
    if (n >= sizeof buf) { snprintf(err, errlen, "rule too long"); return -1; }
    memcpy(buf, line, n + 1);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    char *tok[5];
    int nt = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        if (nt == 5) { snprintf(err, errlen, "too many fields"); return -1; }
        tok[nt++] = t;
    }
    if (nt != 4) { snprintf(err, errlen, "expected 'use <transport> <role> <address>'"); return -1; }
    if (strcmp(tok[0], "use")) { snprintf(err, errlen, "a rule starts with 'use'"); return -1; }
    r->ignored = 0;
    if (!strcmp(tok[1], "os")) r->os = 1;
    else if (!strcmp(tok[1], "vma") || !strcmp(tok[1], "*"))
        r->os = 0;
    else if (!strcmp(tok[1], "xlio") && emu_conf.layout != PYXLIO_LAYOUT_LEGACY &&
             emu_conf.layout != PYXLIO_LAYOUT_VMA) /* newer XLIO parsers; libvma: `vma` only */
        r->os = 0;
    else if (!strcmp(tok[1], "sdp") || !strcmp(tok[1], "sa"))
        r->os = 0, r->ignored = 1;
    else { snprintf(err, errlen, "unknown transport '%s'", tok[1]); return -1; }
    static const char *const roles[] = {"tcp_server", "tcp_client", "udp_sender", "udp_receiver",
                                        "udp_connect"};
    r->role = -1;
    for (int i = 0; i < 5; i++)
        if (!strcmp(tok[2], roles[i])) r->role = i;
    if (r->role < 0) { snprintf(err, errlen, "unknown role '%s'", tok[2]); return -1; }
    char *parts[5];
    int np = 0;
    char *p = tok[3];
    parts[np++] = p;
    for (; *p; p++)
        if (*p == ':') {
            if (np == 4) { snprintf(err, errlen, "too many ':' in '%s'", tok[3]); return -1; }
            *p = 0;
            parts[np++] = p + 1;
        }
    if (np != 2 && np != 4) { snprintf(err, errlen, "address must be ip:port[:ip:port]"); return -1; }
    r->npairs = np / 2;
    for (int i = 0; i < r->npairs; i++) {
        if (parse_ip(parts[2 * i], &r->a[i].ip)) { snprintf(err, errlen, "bad address '%s'", parts[2 * i]); return -1; }
        if (parse_port(parts[2 * i + 1], &r->a[i].port)) { snprintf(err, errlen, "bad port '%s'", parts[2 * i + 1]); return -1; }
    }
    return 0;
}

static int push(rule_t **arr, int *n, int *cap, const rule_t *r) {
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 16;
        rule_t *a = realloc(*arr, (size_t)nc * sizeof *a);
        if (!a) return -1;
        *arr = a;
        *cap = nc;
    }
    (*arr)[(*n)++] = *r;
    return 0;
}

int emu_rule_add(const char *line) {
    pthread_mutex_lock(&g_rules_mu);
    if (g_poisoned) {
        pthread_mutex_unlock(&g_rules_mu);
        emu_log("add_conf_rule: refused (an earlier rule had a syntax error)");
        return 1;
    }
    rule_t r;
    memset(&r, 0, sizeof r);
    char err[160];
    if (!line || parse_rule(line, &r, err, sizeof err)) {
        g_poisoned = 1;
        pthread_mutex_unlock(&g_rules_mu);
        emu_log("add_conf_rule: syntax error: %s in \"%s\"", line ? err : "NULL rule", line ? line : "");
        return 1;
    }
    r.seq = ++g_seq;
    push(&g_added, &g_nadded, &g_capadded, &r);
    pthread_mutex_unlock(&g_rules_mu);
    emu_vlog("add_conf_rule: \"%s\" accepted", line);
    return 0;
}

/* The config file: read whole (it must be a regular file of at most EMU_CONF_FILE_MAX bytes,
 * so /dev/zero, a FIFO or a directory is refused instead of read forever or blocked on), then
 * split into lines of any length.  A line whose first non-blank character is '#' is a comment
 * to its end, as in libxlio's lexer (`^[ \t]*#.*`); a line whose first word is `use` is a rule
 * and must parse (a rule line longer than the parser's 511 bytes is an error, never split);
 * other lines (log settings, application-id blocks) are not the emulator's business and are
 * skipped.  Any error is fatal (emu_conf_error, exit status 87); called from the constructor. */
void emu_rules_load_file(const char *var, const char *path) {
    char q[300];
    emu_quote(path, q, sizeof q);
    /* O_NONBLOCK: opening a FIFO must not wait for a writer */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) emu_conf_error("%s='%s' is invalid: cannot open it (%s); accepted: " ACCEPT_FILE, var, q, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) emu_conf_error("%s='%s' is invalid: cannot stat it (%s); accepted: " ACCEPT_FILE, var, q, strerror(errno));
    if (!S_ISREG(st.st_mode)) {
        const char *kind = S_ISDIR(st.st_mode) ? "a directory" : S_ISCHR(st.st_mode) ? "a character device"
                         : S_ISBLK(st.st_mode) ? "a block device" : S_ISFIFO(st.st_mode) ? "a FIFO"
                         : S_ISSOCK(st.st_mode) ? "a socket" : "not a regular file";
        emu_conf_error("%s='%s' is invalid: it is %s; accepted: " ACCEPT_FILE, var, q, kind);
    }
    size_t cap = EMU_CONF_FILE_MAX + 1, len = 0;   /* one byte more tells "too large" */
    char *text = malloc(cap + 1);
    if (!text) emu_conf_error("%s='%s': no memory to read it", var, q);
    while (len < cap) {
        ssize_t r = REAL(read)(fd, text + len, cap - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) emu_conf_error("%s='%s' is invalid: cannot read it (%s); accepted: " ACCEPT_FILE, var, q, strerror(errno));
        if (r == 0) break;
        len += (size_t)r;
    }
    REAL(close)(fd);
    if (len > EMU_CONF_FILE_MAX)
        emu_conf_error("%s='%s' is invalid: it is larger than %u bytes; accepted: " ACCEPT_FILE, var, q, EMU_CONF_FILE_MAX);
    text[len] = 0;
    pthread_mutex_lock(&g_rules_mu);
    int lineno = 0;
    for (size_t off = 0; off < len;) {
        char *line = text + off;
        size_t n = 0;
        while (off + n < len && line[n] != '\n') n++;
        off += n + (off + n < len);     /* past the newline */
        lineno++;
        if (memchr(line, 0, n))
            emu_conf_error("%s='%s' line %d: a NUL byte; accepted: a text file", var, q, lineno);
        size_t b = 0;
        while (b < n && (line[b] == ' ' || line[b] == '\t')) b++;
        if (b == n || line[b] == '#') continue;                               /* blank, comment */
        if (n - b < 3 || strncmp(line + b, "use", 3) ||
            (n - b > 3 && line[b + 3] != ' ' && line[b + 3] != '\t' && line[b + 3] != '\r'))
            continue;                                                         /* not a rule */
        if (n - b > 511)
            emu_conf_error("%s='%s' line %d: a rule line of %zu bytes; accepted: at most 511 bytes",
                           var, q, lineno, n - b);
        char rule[512], err[160];
        memcpy(rule, line + b, n - b);
        rule[n - b] = 0;
        rule_t r;
        memset(&r, 0, sizeof r);
        if (parse_rule(rule, &r, err, sizeof err))
            emu_conf_error("%s='%s' line %d: bad rule: %s (in \"%s\")", var, q, lineno, err, rule);
        r.seq = ++g_seq;
        if (push(&g_file, &g_nfile, &g_capfile, &r))
            emu_conf_error("%s='%s': no memory for its rules", var, q);
    }
    pthread_mutex_unlock(&g_rules_mu);
    free(text);
}

void emu_rules_fork_child(void) { pthread_mutex_init(&g_rules_mu, NULL); }

uint64_t emu_rules_seq(void) {
    pthread_mutex_lock(&g_rules_mu);
    uint64_t s = g_seq;
    pthread_mutex_unlock(&g_rules_mu);
    return s;
}

/* address of a sockaddr as IPv4 host order; 0 if not IPv4 / v4-mapped (then only '*' matches) */
static int sa_v4(const struct sockaddr *sa, uint32_t *ip, unsigned *port) {
    if (!sa) return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        *ip = ntohl(a->sin_addr.s_addr);
        *port = ntohs(a->sin_port);
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        *port = ntohs(a->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            uint32_t v;
            memcpy(&v, &a->sin6_addr.s6_addr[12], 4);
            *ip = ntohl(v);
            return 1;
        }
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) { *ip = 0; return 1; }
        return 2; /* real IPv6 */
    }
    return 0;
}

static int ap_match(const ap_match_t *m, const struct sockaddr *sa) {
    uint32_t ip = 0;
    unsigned port = 0;
    int k = sa_v4(sa, &ip, &port);
    if (!k) return m->ip.any && m->port.any;
    if (!m->port.any && (port < m->port.lo || port > m->port.hi)) return 0;
    if (m->ip.any) return 1;
    return k == 1 && (ip & m->ip.mask) == m->ip.addr;
}

/* `a` is matched against the rule's first pair, `b` (may be NULL) against its optional second.
 * As in libxlio.conf: tcp_server / udp_receiver name the local address; udp_sender the
 * destination; tcp_client / udp_connect the remote address first, then optionally the local. */
static int rule_match(const rule_t *r, int role, const struct sockaddr *a, const struct sockaddr *b) {
    if (r->role != role || r->seq == 0 || r->ignored) return 0;
    if (!ap_match(&r->a[0], a)) return 0;
    if (r->npairs == 2 && b && !ap_match(&r->a[1], b)) return 0;
    return 1;
}

int emu_rules_use_os(int role, const struct sockaddr *first, const struct sockaddr *second,
                     uint64_t upto) {
    int res = 0, found = 0;
    pthread_mutex_lock(&g_rules_mu);
    for (int i = g_nadded - 1; i >= 0 && !found; i--)
        if (g_added[i].seq <= upto && rule_match(&g_added[i], role, first, second)) {
            found = 1;
            res = g_added[i].os;
        }
    for (int i = 0; i < g_nfile && !found; i++)
        if (g_file[i].seq <= upto && rule_match(&g_file[i], role, first, second)) {
            found = 1;
            res = g_file[i].os;
        }
    pthread_mutex_unlock(&g_rules_mu);
    return res;
}
