/* The settings parser against random byte strings (a property test: no
 * crash, no out-of-bounds read under ASan/UBSan, and every rejection
 * explained in one line that names the variable), plus the documented good
 * and bad values. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

static const char *const names[] = {"THREADGUARD_MAX_THREADS", "THREADGUARD_POOL_THREADS",
                                    "THREADGUARD_ON_LIMIT",    "THREADGUARD_STACK",
                                    "THREADGUARD_ARENAS",      "THREADGUARD_NPROC",
                                    "THREADGUARD_REPORT",      "THREADGUARD_DEBUG",
                                    "THREADGUARD_IMPORT",      "THREADGUARD_OBSERVE"};
#define NAMES (sizeof names / sizeof names[0])

static uint64_t state = 0x9e3779b97f4a7c15ULL;

static uint64_t next(void) { /* xorshift64 */
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

/* Bytes that parsers care about, mixed with arbitrary ones. */
static char random_byte(void) {
    static const char interesting[] = "0123456789kKmMgGiBb-+ .,/%pjsonmaxwarndeny\xc3\xa9\xff";
    uint64_t r = next();
    if (r % 3) return interesting[(r >> 8) % (sizeof interesting - 1)];
    char c = (char)(r >> 16);
    return c ? c : 'x';
}

static void check_rejection(const char *name, const char *value) {
    const char *message = threadguard_last_error();
    CHECK(strstr(message, name) != NULL, "%s='%s': message does not name it: %s", name, value,
          message);
    CHECK(strstr(message, "expected") != NULL, "%s: message does not say what is expected: %s",
          name, message);
    CHECK(strchr(message, '\n') == NULL, "%s: message is not one line: %s", name, message);
}

int main(void) {
    char value[96];
    long accepted = 0, rejected = 0;
    for (int i = 0; i < 300000; i++) {
        size_t len = next() % (sizeof value - 1);
        for (size_t j = 0; j < len; j++) value[j] = random_byte();
        value[len] = '\0';
        const char *name = names[next() % NAMES];
        int rc = threadguard_check_setting(name, value);
        CHECK(rc == THREADGUARD_OK || rc == THREADGUARD_EINVAL, "rc %d", rc);
        if (rc == THREADGUARD_OK) {
            accepted++;
        } else {
            rejected++;
            check_rejection(name, value);
        }
    }
    CHECK(accepted > 0 && rejected > 0, "accepted %ld rejected %ld", accepted, rejected);

    static const char *const bad_stack[] = {"abc",  "-1",       "99999999G",
                                            "",     "\xc3\xa9", "512q",
                                            "1.5M", "2M extra", "12345678901234567890",
                                            "100k", "0"};
    for (size_t i = 0; i < sizeof bad_stack / sizeof bad_stack[0]; i++) {
        CHECK(threadguard_check_setting("THREADGUARD_STACK", bad_stack[i]) == THREADGUARD_EINVAL,
              "THREADGUARD_STACK='%s' accepted", bad_stack[i]);
        check_rejection("THREADGUARD_STACK", bad_stack[i]);
    }
    static const char *const good_stack[] = {"512k", "2M", "1g", "262144", "512KiB", "1GB"};
    for (size_t i = 0; i < sizeof good_stack / sizeof good_stack[0]; i++)
        CHECK(threadguard_check_setting("THREADGUARD_STACK", good_stack[i]) == THREADGUARD_OK,
              "THREADGUARD_STACK='%s' rejected: %s", good_stack[i], threadguard_last_error());
    CHECK(threadguard_check_setting("THREADGUARD_ON_LIMIT", "deny") == THREADGUARD_OK, "deny");
    CHECK(threadguard_check_setting("THREADGUARD_ON_LIMIT", "Deny") == THREADGUARD_EINVAL, "Deny");
    CHECK(threadguard_check_setting("THREADGUARD_MAX_THREADS", "0") == THREADGUARD_EINVAL, "0");
    CHECK(threadguard_check_setting("THREADGUARD_MAX_THREADS", "64") == THREADGUARD_OK, "64");
    CHECK(threadguard_check_setting("THREADGUARD_NPROC", "max") == THREADGUARD_OK, "max");
    CHECK(threadguard_check_setting("THREADGUARD_NOPE", "1") == THREADGUARD_EINVAL, "unknown");
    CHECK(threadguard_check_setting(NULL, "1") == THREADGUARD_EINVAL, "NULL name");
    fprintf(stderr, "fuzz: %ld accepted, %ld rejected\n", accepted, rejected);
    return check_failures;
}
