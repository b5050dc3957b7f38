/*
 * A Mosquitto 2.0 plugin (v5 plugin API) that makes the local broker decide as AWS IoT Core
 * would, by asking the fleet stand-in (tests/local-stack/fleet) over a Unix socket:
 *
 *   MOSQ_EVT_BASIC_AUTH  every CONNECT: the client id and the DER of the TLS client certificate
 *                        go to the stand-in, which allows the connection only for a certificate
 *                        registered and ACTIVE in the emulated AWS IoT whose policies allow
 *                        iot:Connect for that client id.
 *   MOSQ_EVT_ACL_CHECK   every publish, subscribe, unsubscribe and delivery: the stand-in
 *                        evaluates the AWS IoT policies attached to the connection's certificate.
 *   MOSQ_EVT_MESSAGE     publishes to the fleet-provisioning request topics are handed to the
 *                        stand-in, which answers later (the Lambda functions take time).
 *   MOSQ_EVT_TICK        (every <= 100 ms) reads the stand-in's answers and publishes each to the
 *                        one connection that asked (mosquitto_broker_publish with a client id),
 *                        and disconnects clients the stand-in names (AWS IoT closes the
 *                        connection of an MQTT 3.1.1 client that publishes without permission).
 *   MOSQ_EVT_DISCONNECT  tells the stand-in the connection is gone.
 *
 * Connections are numbered here, so an answer meant for one connection is never delivered to a
 * later connection that reuses its client id.
 *
 * Wire format, both ways: u32 big-endian length of what follows, u8 frame type, then fields,
 * each a u32 big-endian length and that many bytes. Integers are 8-byte big-endian fields.
 * Nothing here fails open: without an answer from the stand-in, connections and checks are denied.
 *
 * Options (mosquitto.conf): plugin_opt_socket <path of the stand-in's Unix socket>.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>

enum frame_type {
	FRAME_HELLO = 1,
	FRAME_CONNECT = 2,
	FRAME_ACL = 3,
	FRAME_MESSAGE = 4,
	FRAME_DISCONNECT = 5,
	FRAME_VERDICT = 0x80,
	FRAME_DELIVER = 0x81,
	FRAME_KICK = 0x82,
};

#define PROTOCOL_VERSION "1"
/* AWS IoT's largest message is 128 KiB; a frame carries one message plus a few short fields. */
#define MAX_FRAME_LEN (1024u * 1024u)
/* The broker waits this long for a verdict. A first connection with a certificate costs the
 * stand-in a few emulator calls, and the emulator is shared with other test suites. */
#define VERDICT_TIMEOUT_MS 10000
#define RECONNECT_INTERVAL_MS 500

struct connection {
	struct mosquitto *client;
	uint64_t id;
	char *client_id;
	/* A newer connection took over this client id: nothing more is delivered here. */
	bool superseded;
	struct connection *next;
};

struct kick {
	uint64_t connection_id;
	struct kick *next;
};

struct buffer {
	unsigned char *data;
	size_t len;
	size_t cap;
};

static mosquitto_plugin_id_t *plugin_id;
static char *socket_path;
static int standin_fd = -1;
static bool was_connected;
static bool kick_everyone;
static long long last_connect_attempt_ms;
static struct connection *connections;
static struct kick *kicks;
static uint64_t next_connection_id = 1;
static uint64_t next_request_id = 1;
static struct buffer inbox;

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- buffers and frames ---- */

static bool buffer_reserve(struct buffer *b, size_t extra)
{
	if(b->len + extra <= b->cap) return true;
	size_t cap = b->cap ? b->cap : 256;
	while(cap < b->len + extra) cap *= 2;
	unsigned char *data = realloc(b->data, cap);
	if(!data) return false;
	b->data = data;
	b->cap = cap;
	return true;
}

static bool put_bytes(struct buffer *b, const void *data, size_t len)
{
	if(!buffer_reserve(b, len)) return false;
	if(len) memcpy(b->data + b->len, data, len);
	b->len += len;
	return true;
}

static bool put_u32(struct buffer *b, uint32_t v)
{
	unsigned char be[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
	return put_bytes(b, be, sizeof(be));
}

static bool put_field(struct buffer *b, const void *data, size_t len)
{
	if(len > MAX_FRAME_LEN) return false;
	return put_u32(b, (uint32_t)len) && put_bytes(b, data, len);
}

static bool put_str(struct buffer *b, const char *s)
{
	return put_field(b, s, s ? strlen(s) : 0);
}

static bool put_u64(struct buffer *b, uint64_t v)
{
	unsigned char be[8];
	for(int i = 0; i < 8; i++) be[i] = (unsigned char)(v >> (56 - 8 * i));
	return put_field(b, be, sizeof(be));
}

/* Starts a frame: room for the length, then the type. finish_frame writes the length. */
static bool begin_frame(struct buffer *b, enum frame_type type)
{
	b->len = 0;
	unsigned char t = (unsigned char)type;
	return put_u32(b, 0) && put_bytes(b, &t, 1);
}

static bool finish_frame(struct buffer *b)
{
	size_t body = b->len - 4;
	if(body > MAX_FRAME_LEN) return false;
	b->data[0] = (unsigned char)(body >> 24);
	b->data[1] = (unsigned char)(body >> 16);
	b->data[2] = (unsigned char)(body >> 8);
	b->data[3] = (unsigned char)body;
	return true;
}

static uint32_t get_u32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The fields of one received frame, pointing into the inbox. */
struct fields {
	const unsigned char *data[8];
	size_t len[8];
	int count;
};

static bool parse_fields(const unsigned char *p, size_t len, struct fields *f)
{
	f->count = 0;
	while(len > 0){
		if(len < 4 || f->count == 8) return false;
		uint32_t n = get_u32(p);
		p += 4;
		len -= 4;
		if(n > len) return false;
		f->data[f->count] = p;
		f->len[f->count] = n;
		f->count++;
		p += n;
		len -= n;
	}
	return true;
}

static bool field_u64(const struct fields *f, int i, uint64_t *out)
{
	if(i >= f->count || f->len[i] != 8) return false;
	uint64_t v = 0;
	for(int k = 0; k < 8; k++) v = (v << 8) | f->data[i][k];
	*out = v;
	return true;
}

/* A NUL-terminated copy of a text field (topics, client ids). */
static char *field_str(const struct fields *f, int i)
{
	if(i >= f->count || memchr(f->data[i], 0, f->len[i])) return NULL;
	char *s = mosquitto_malloc(f->len[i] + 1);
	if(!s) return NULL;
	memcpy(s, f->data[i], f->len[i]);
	s[f->len[i]] = 0;
	return s;
}

/* ---- connections ---- */

static struct connection *connection_by_client(const struct mosquitto *client)
{
	for(struct connection *c = connections; c; c = c->next){
		if(c->client == client) return c;
	}
	return NULL;
}

static struct connection *connection_by_id(uint64_t id)
{
	for(struct connection *c = connections; c; c = c->next){
		if(c->id == id) return c;
	}
	return NULL;
}

static void connection_remove(struct connection *gone)
{
	for(struct connection **p = &connections; *p; p = &(*p)->next){
		if(*p == gone){
			*p = gone->next;
			mosquitto_free(gone->client_id);
			mosquitto_free(gone);
			return;
		}
	}
}

/* ---- the socket to the stand-in ---- */

static void standin_close(void)
{
	if(standin_fd >= 0){
		close(standin_fd);
		standin_fd = -1;
		inbox.len = 0;
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cvm-iot-bridge: lost the stand-in at %s", socket_path);
	}
}

static bool write_all(const unsigned char *data, size_t len)
{
	long long deadline = now_ms() + VERDICT_TIMEOUT_MS;
	while(len > 0){
		ssize_t n = send(standin_fd, data, len, MSG_NOSIGNAL);
		if(n > 0){
			data += n;
			len -= (size_t)n;
			continue;
		}
		if(n < 0 && errno == EINTR) continue;
		if(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)){
			long long left = deadline - now_ms();
			struct pollfd pfd = {.fd = standin_fd, .events = POLLOUT};
			if(left > 0 && poll(&pfd, 1, (int)left) > 0) continue;
		}
		return false;
	}
	return true;
}

static bool send_frame(struct buffer *frame)
{
	if(standin_fd < 0 || !finish_frame(frame)) return false;
	if(!write_all(frame->data, frame->len)){
		standin_close();
		return false;
	}
	return true;
}

static bool standin_connect(void)
{
	if(standin_fd >= 0) return true;
	long long now = now_ms();
	if(now - last_connect_attempt_ms < RECONNECT_INTERVAL_MS) return false;
	last_connect_attempt_ms = now;

	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if(strlen(socket_path) >= sizeof(addr.sun_path)) return false;
	strcpy(addr.sun_path, socket_path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if(fd < 0) return false;
	if(connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0){
		close(fd);
		return false;
	}
	int flags = fcntl(fd, F_GETFL, 0);
	if(flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0){
		close(fd);
		return false;
	}
	standin_fd = fd;
	inbox.len = 0;

	struct buffer hello = {0};
	bool ok = begin_frame(&hello, FRAME_HELLO) && put_str(&hello, PROTOCOL_VERSION) && send_frame(&hello);
	free(hello.data);
	if(!ok) return false;
	/* The stand-in lost what it knew of the connections made before: have them reconnect. */
	if(was_connected) kick_everyone = true;
	was_connected = true;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "cvm-iot-bridge: connected to the stand-in at %s", socket_path);
	return true;
}

static void handle_deliver(const struct fields *f)
{
	uint64_t connection_id, qos;
	if(!field_u64(f, 0, &connection_id) || !field_u64(f, 4, &qos) || qos > 1) return;
	struct connection *c = connection_by_id(connection_id);
	/* The connection that asked is gone: AWS IoT answers on that connection only. */
	if(!c || c->superseded) return;
	char *topic = field_str(f, 2);
	if(!topic) return;
	if(mosquitto_broker_publish_copy(c->client_id, topic, (int)f->len[3], f->data[3], (int)qos, false, NULL) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cvm-iot-bridge: could not queue an answer for %s", c->client_id);
	}
	mosquitto_free(topic);
}

static void handle_kick(const struct fields *f)
{
	uint64_t connection_id;
	if(!field_u64(f, 0, &connection_id)) return;
	struct kick *k = mosquitto_calloc(1, sizeof(*k));
	if(!k) return;
	k->connection_id = connection_id;
	k->next = kicks;
	kicks = k;
}

/*
 * Reads what the stand-in sent, up to timeout_ms, and handles deliveries and kicks. When
 * wanted_request is not 0, returns as soon as that request's verdict arrived: 1 allow, 0 deny.
 * Returns -1 when the verdict did not come (or nothing was wanted).
 */
static int pump(uint64_t wanted_request, int timeout_ms)
{
	long long deadline = now_ms() + timeout_ms;
	while(standin_fd >= 0){
		/* Frames already in the inbox first. */
		size_t off = 0;
		int verdict = -1;
		while(inbox.len - off >= 5){
			uint32_t body = get_u32(inbox.data + off);
			if(body == 0 || body > MAX_FRAME_LEN){
				standin_close();
				return -1;
			}
			if(inbox.len - off - 4 < body) break;
			unsigned char type = inbox.data[off + 4];
			struct fields f;
			if(parse_fields(inbox.data + off + 5, body - 1, &f)){
				if(type == FRAME_VERDICT){
					uint64_t request, allow;
					if(field_u64(&f, 0, &request) && field_u64(&f, 1, &allow) && request == wanted_request && wanted_request != 0){
						verdict = allow == 1 ? 1 : 0;
					}
					/* Other verdicts answer requests that already timed out: dropped. */
				}else if(type == FRAME_DELIVER){
					handle_deliver(&f);
				}else if(type == FRAME_KICK){
					handle_kick(&f);
				}
			}
			off += 4 + body;
			if(verdict >= 0) break;
		}
		if(off > 0){
			memmove(inbox.data, inbox.data + off, inbox.len - off);
			inbox.len -= off;
		}
		if(verdict >= 0) return verdict;

		long long left = deadline - now_ms();
		if(left < 0) left = 0;
		struct pollfd pfd = {.fd = standin_fd, .events = POLLIN};
		int ready = poll(&pfd, 1, (int)left);
		if(ready < 0 && errno == EINTR) continue;
		if(ready <= 0) return -1;
		if(!buffer_reserve(&inbox, 65536)){
			standin_close();
			return -1;
		}
		ssize_t n = recv(standin_fd, inbox.data + inbox.len, inbox.cap - inbox.len, 0);
		if(n > 0){
			inbox.len += (size_t)n;
		}else if(n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)){
			standin_close();
			return -1;
		}
	}
	return -1;
}

/* Sends a request frame and waits for its verdict: true only on an explicit allow. */
static bool ask(struct buffer *frame, uint64_t request_id)
{
	if(!standin_connect()) return false;
	if(!send_frame(frame)) return false;
	int verdict = pump(request_id, VERDICT_TIMEOUT_MS);
	if(verdict < 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cvm-iot-bridge: no verdict from the stand-in; denying");
	}
	return verdict == 1;
}

/* ---- events ---- */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	X509 *cert = mosquitto_client_certificate(ed->client);
	if(!client_id || !cert){
		if(cert) X509_free(cert);
		return MOSQ_ERR_AUTH;
	}
	unsigned char *der = NULL;
	int der_len = i2d_X509(cert, &der);
	X509_free(cert);
	if(der_len <= 0) return MOSQ_ERR_AUTH;

	uint64_t connection_id = next_connection_id++;
	uint64_t request_id = next_request_id++;
	struct buffer frame = {0};
	bool built = begin_frame(&frame, FRAME_CONNECT)
		&& put_u64(&frame, request_id)
		&& put_u64(&frame, connection_id)
		&& put_str(&frame, client_id)
		&& put_field(&frame, der, (size_t)der_len)
		&& put_u64(&frame, mosquitto_client_clean_session(ed->client) ? 1 : 0)
		&& put_u64(&frame, (uint64_t)mosquitto_client_protocol_version(ed->client));
	OPENSSL_free(der);
	bool allowed = built && ask(&frame, request_id);
	free(frame.data);
	if(!allowed) return MOSQ_ERR_AUTH;

	struct connection *c = mosquitto_calloc(1, sizeof(*c));
	if(!c) return MOSQ_ERR_AUTH;
	c->client_id = mosquitto_strdup(client_id);
	if(!c->client_id){
		mosquitto_free(c);
		return MOSQ_ERR_AUTH;
	}
	for(struct connection *old = connections; old; old = old->next){
		if(!strcmp(old->client_id, client_id)) old->superseded = true;
	}
	c->client = ed->client;
	c->id = connection_id;
	c->next = connections;
	connections = c;
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	struct connection *c = connection_by_client(ed->client);
	if(!c || c->superseded || !ed->topic) return MOSQ_ERR_ACL_DENIED;

	uint64_t request_id = next_request_id++;
	struct buffer frame = {0};
	bool allowed = begin_frame(&frame, FRAME_ACL)
		&& put_u64(&frame, request_id)
		&& put_u64(&frame, c->id)
		&& put_u64(&frame, (uint64_t)ed->access)
		&& put_str(&frame, ed->topic)
		&& put_u64(&frame, ed->qos)
		&& ask(&frame, request_id);
	free(frame.data);
	return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static bool is_api_request_topic(const char *topic)
{
	return !strncmp(topic, "$aws/certificates/", 18) || !strncmp(topic, "$aws/provisioning-templates/", 28);
}

static int on_message(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_message *ed = event_data;
	if(!ed->topic || !is_api_request_topic(ed->topic)) return MOSQ_ERR_SUCCESS;
	struct connection *c = connection_by_client(ed->client);
	if(!c || c->superseded) return MOSQ_ERR_SUCCESS;
	/* The request itself reaches no subscriber: the stand-in denies reading request topics. */
	struct buffer frame = {0};
	bool sent = standin_connect()
		&& begin_frame(&frame, FRAME_MESSAGE)
		&& put_u64(&frame, c->id)
		&& put_str(&frame, ed->topic)
		&& put_field(&frame, ed->payload, ed->payloadlen)
		&& send_frame(&frame);
	free(frame.data);
	if(!sent){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cvm-iot-bridge: could not hand a request from %s to the stand-in", c->client_id);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_disconnect *ed = event_data;
	struct connection *c = connection_by_client(ed->client);
	if(!c) return MOSQ_ERR_SUCCESS;
	struct buffer frame = {0};
	if(standin_fd >= 0 && begin_frame(&frame, FRAME_DISCONNECT) && put_u64(&frame, c->id)){
		send_frame(&frame);
	}
	free(frame.data);
	connection_remove(c);
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	if(standin_connect()) pump(0, 0);

	if(kick_everyone){
		kick_everyone = false;
		mosquitto_kick_client_by_clientid(NULL, false);
	}
	while(kicks){
		struct kick *k = kicks;
		kicks = k->next;
		struct connection *c = connection_by_id(k->connection_id);
		if(c && !c->superseded){
			/* The DISCONNECT event this causes removes the connection. */
			char *client_id = mosquitto_strdup(c->client_id);
			if(client_id){
				mosquitto_kick_client_by_clientid(client_id, false);
				mosquitto_free(client_id);
			}
		}
		mosquitto_free(k);
	}
	return MOSQ_ERR_SUCCESS;
}

/* ---- plugin entry points ---- */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "socket")) socket_path = mosquitto_strdup(options[i].value);
	}
	if(!socket_path){
		mosquitto_log_printf(MOSQ_LOG_ERR, "cvm-iot-bridge: plugin_opt_socket is required");
		return MOSQ_ERR_INVAL;
	}
	if(!standin_connect()){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "cvm-iot-bridge: the stand-in at %s is not there yet; every connection is refused until it is", socket_path);
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	while(connections) connection_remove(connections);
	while(kicks){
		struct kick *k = kicks;
		kicks = k->next;
		mosquitto_free(k);
	}
	if(standin_fd >= 0) close(standin_fd);
	standin_fd = -1;
	was_connected = false;
	kick_everyone = false;
	free(inbox.data);
	inbox = (struct buffer){0};
	mosquitto_free(socket_path);
	socket_path = NULL;
	return MOSQ_ERR_SUCCESS;
}
