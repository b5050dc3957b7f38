/*
 * A stand-in for Zymbit's libzk_app_utils, for the device client's tests: the functions of
 * zk_app_utils.h that cvm-device calls, with the same signatures and memory contract
 * (outputs allocated with malloc, freed by the caller with free), over software P-256 keys
 * (OpenSSL's libcrypto) kept as PEM files in $ZK_STANDIN_DIR:
 *
 *   slot-N.pem   the key in slot N. Slots 0-2 exist like a module's factory keys (made on
 *                first use); zkGenKeyPair allocates slots from 16 up, like an HSM6.
 *
 * zkOpen fails when ZK_STANDIN_DIR is unset, as the real library fails when no module answers.
 * Overlapping calls on one context fail with -99, so a client that does not serialize its
 * use of the context is caught.
 *
 * Build: cc -shared -fPIC -o libzk_app_utils.so zk_standin.c -lcrypto
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

typedef void* zkCTX;

struct standin {
    char dir[4096];
    int busy;
};

#define FACTORY_SLOTS 3
#define FIRST_GENERATED_SLOT 16
#define LAST_SLOT 63

static int slot_path(const struct standin* s, int slot, char* out, size_t n)
{
    int written = snprintf(out, n, "%s/slot-%d.pem", s->dir, slot);
    return (written > 0 && (size_t)written < n) ? 0 : -1;
}

/* Makes a key file at `path` unless there is one: written whole under a private name, then
 * linked into place, so concurrent users never see half a file and never both win.
 * 0: made; 1: there was one already; -1: failure. */
static int create_key_file(const char* path)
{
    char tmp[4300];
    static int counter;
    int n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    if (snprintf(tmp, sizeof tmp, "%s.%d.%d.tmp", path, (int)getpid(), n) >= (int)sizeof tmp) {
        return -1;
    }
    EVP_PKEY* key = EVP_EC_gen("P-256");
    FILE* f = key ? fopen(tmp, "wx") : NULL;
    int ok = f && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (f) {
        ok = (fclose(f) == 0) && ok;
    }
    EVP_PKEY_free(key);
    int rc = -1;
    if (ok) {
        rc = link(tmp, path) == 0 ? 0 : (access(path, F_OK) == 0 ? 1 : -1);
    }
    unlink(tmp);
    return rc;
}

static EVP_PKEY* load_key(const struct standin* s, int slot)
{
    char path[4200];
    if (slot < 0 || slot > LAST_SLOT || slot_path(s, slot, path, sizeof path) != 0) {
        return NULL;
    }
    if (slot < FACTORY_SLOTS && access(path, F_OK) != 0 && create_key_file(path) < 0) {
        return NULL;
    }
    FILE* f = fopen(path, "r");
    if (!f) {
        return NULL;
    }
    EVP_PKEY* key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return key;
}

static int enter(struct standin* s)
{
    return __atomic_exchange_n(&s->busy, 1, __ATOMIC_ACQ_REL) == 0 ? 0 : -99;
}

static void leave(struct standin* s)
{
    __atomic_store_n(&s->busy, 0, __ATOMIC_RELEASE);
}

int zkOpen(zkCTX* ctx)
{
    const char* dir = getenv("ZK_STANDIN_DIR");
    if (!ctx || !dir || strlen(dir) >= sizeof(((struct standin*)0)->dir)) {
        return -1;
    }
    struct standin* s = calloc(1, sizeof *s);
    if (!s) {
        return -1;
    }
    strcpy(s->dir, dir);
    *ctx = s;
    return 0;
}

int zkClose(zkCTX ctx)
{
    free(ctx);
    return 0;
}

int zkExportPubKey(zkCTX ctx, uint8_t** pk, int* pk_sz, int pubkey_slot, bool slot_is_foreign)
{
    struct standin* s = ctx;
    if (!s || !pk || !pk_sz || slot_is_foreign) {
        return -1;
    }
    if (enter(s) != 0) {
        return -99;
    }
    int rc = -2;
    EVP_PKEY* key = load_key(s, pubkey_slot);
    uint8_t point[65];
    size_t len = 0;
    if (key
        && EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                           sizeof point, &len)
        && len == 65 && point[0] == 0x04) {
        *pk = malloc(64);
        if (*pk) {
            memcpy(*pk, point + 1, 64);
            *pk_sz = 64;
            rc = 0;
        }
    }
    EVP_PKEY_free(key);
    leave(s);
    return rc;
}

int zkGenECDSASigFromDigest(zkCTX ctx, const uint8_t* digest, int slot, uint8_t** sig,
                            int* sig_sz)
{
    struct standin* s = ctx;
    if (!s || !digest || !sig || !sig_sz) {
        return -1;
    }
    if (enter(s) != 0) {
        return -99;
    }
    /* Long enough for overlapping callers to collide. */
    usleep(2000);
    int rc = -2;
    EVP_PKEY* key = load_key(s, slot);
    EVP_PKEY_CTX* pctx = key ? EVP_PKEY_CTX_new(key, NULL) : NULL;
    unsigned char der[128];
    size_t der_len = sizeof der;
    if (pctx && EVP_PKEY_sign_init(pctx) == 1
        && EVP_PKEY_sign(pctx, der, &der_len, digest, 32) == 1) {
        const unsigned char* p = der;
        ECDSA_SIG* parsed = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
        const BIGNUM* r = NULL;
        const BIGNUM* sv = NULL;
        if (parsed) {
            ECDSA_SIG_get0(parsed, &r, &sv);
            uint8_t* out = malloc(64);
            if (out && BN_bn2binpad(r, out, 32) == 32 && BN_bn2binpad(sv, out + 32, 32) == 32) {
                *sig = out;
                *sig_sz = 64;
                rc = 0;
            } else {
                free(out);
            }
            ECDSA_SIG_free(parsed);
        }
    }
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(key);
    leave(s);
    return rc;
}

int zkGenKeyPair(zkCTX ctx, int key_type)
{
    struct standin* s = ctx;
    if (!s || key_type != 0 /* ZK_NISTP256 */) {
        return -1;
    }
    if (enter(s) != 0) {
        return -99;
    }
    int rc = -3;
    for (int slot = FIRST_GENERATED_SLOT; slot <= LAST_SLOT; slot++) {
        char path[4200];
        if (slot_path(s, slot, path, sizeof path) != 0) {
            break;
        }
        int made = create_key_file(path);
        if (made == 0) {
            rc = slot;
        }
        if (made != 1) {
            break;
        }
    }
    leave(s);
    return rc;
}
