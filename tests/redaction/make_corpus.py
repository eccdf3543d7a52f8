"""Build tests/redaction/corpus.jsonl: labelled redaction examples, deterministic from one seed.

    python -m tests.redaction.make_corpus        # rewrites corpus.jsonl next to this file

Templates in the shapes PII reaches a gateway in — support tickets, application logs, code and
config snippets, e-mails, chat, CSV/JSON rows; English, German, French, Spanish and Portuguese —
filled with generated values that are valid of their kind (Luhn-valid cards with real brand
prefixes, IBANs with correct mod-97 check digits and country lengths, SSNs in issued ranges) and
with hard negatives that look like them: order and invoice numbers, timestamps, version strings,
UUIDs, hashes, tracking numbers, ISBNs, Luhn-failing card-like numbers, phone-like serials. Every
line: {"id", "source", "lang", "text", "spans": [[start, end, type], ...]}.
"""
import base64
import json
import random
import string
from pathlib import Path

SEED = 20261203
COPIES = 9            # renderings per template: ~45 templates -> ~400 examples
OUT = Path(__file__).with_name("corpus.jsonl")

FIRST = ["ana", "bruno", "chloe", "dmitri", "emma", "farid", "greta", "hiro", "ines", "jonas",
         "karin", "luis", "maria", "noah", "olga", "pierre", "quinn", "rosa", "sven", "yuki"]
LAST = ["silva", "keller", "dupont", "ivanov", "rossi", "haddad", "nilsson", "tanaka", "garcia",
        "schmidt", "martin", "lopez", "novak", "okafor", "weber", "moreau", "costa", "berg"]
DOMAINS = ["example.com", "mail.example.org", "acme-corp.io", "firma.de", "correo.es",
           "societe.fr", "empresa.com.br", "uni-example.ac.uk", "gmail.com", "outlook.com"]


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


class Gen:
    def __init__(self, rng: random.Random):
        self.r = rng

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def alnum(self, n: int, alphabet=string.ascii_letters + string.digits) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    # ---- positives ----
    def email(self) -> str:
        f, l, d = self.r.choice(FIRST), self.r.choice(LAST), self.r.choice(DOMAINS)
        shape = self.r.randrange(5)
        local = [f"{f}.{l}", f"{f[0]}{l}", f"{f}_{l}{self.r.randrange(10, 99)}", f"{f}+support",
                 f"{l}.{f}"][shape]
        return f"{local}@{d}"

    def phone(self) -> str:
        d = self.digits
        return self.r.choice([
            lambda: f"+1 415 555 {d(4)}", lambda: f"+1-212-555-{d(4)}", lambda: f"+44 20 7946 {d(4)}",
            lambda: f"+44 7700 900{d(3)}", lambda: f"+49 30 {d(8)}", lambda: f"+49 171 {d(7)}",
            lambda: f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", lambda: f"+34 612 {d(3)} {d(3)}",
            lambda: f"+351 912 {d(3)} {d(3)}", lambda: f"+55 11 9{d(4)}-{d(4)}",
            lambda: f"+91 98{d(3)} {d(5)}", lambda: f"+81 3-{d(4)}-{d(4)}",
            lambda: f"({self.r.randrange(201, 989)}) 555-{d(4)}",
            lambda: f"{self.r.randrange(201, 989)}-555-{d(4)}",
            lambda: f"{self.r.randrange(201, 989)}.555.{d(4)}",
            lambda: f"030 {d(8)}", lambda: f"0171/{d(7)}", lambda: f"089-{d(7)}",
            lambda: f"06 {d(2)} {d(2)} {d(2)} {d(2)}", lambda: f"01 {d(2)} {d(2)} {d(2)} {d(2)}",
            lambda: f"020 7946 {d(4)}", lambda: f"07700 900{d(3)}",
        ])()

    def card(self, fmt: str | None = None) -> str:
        prefix, length = self.r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16),
                                        ("37", 15), ("34", 15), ("6011", 16), ("65", 16),
                                        ("35", 16), ("4", 13)])
        body = prefix + self.digits(length - len(prefix) - 1)
        number = body + luhn_digit(body)
        fmt = fmt or self.r.choice(["plain", "space", "dash"])
        if fmt == "plain" or length == 13:
            return number
        sep = " " if fmt == "space" else "-"
        if length == 15:
            return sep.join((number[:4], number[4:10], number[10:]))
        return sep.join(number[i:i + 4] for i in range(0, 16, 4))

    def iban(self) -> str:
        country, bban_len, letters = self.r.choice([("DE", 18, 0), ("FR", 23, 0), ("ES", 20, 0),
                                                    ("NL", 14, 4), ("GB", 18, 4), ("IT", 23, 1),
                                                    ("PT", 21, 0), ("BE", 12, 0), ("AT", 16, 0)])
        bban = self.alnum(letters, string.ascii_uppercase) + self.digits(bban_len - letters)
        check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
        iban = f"{country}{check:02d}{bban}"
        if self.r.random() < 0.5:
            return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
        return iban

    def ssn(self) -> str:
        area = self.r.choice([n for n in range(1, 900) if n != 666])
        return f"{area:03d}-{self.r.randrange(1, 100):02d}-{self.r.randrange(1, 10000):04d}"

    def ip(self) -> str:
        r = self.r
        if r.random() < 0.7:
            return ".".join(str(x) for x in (r.choice([10, 172, 192, 203, 198, 81, 185, 34]),
                                             r.randrange(0, 256), r.randrange(0, 256),
                                             r.randrange(1, 255)))
        groups = [f"{r.randrange(0, 65536):x}" for _ in range(8)]
        groups[0] = r.choice(["2001", "fe80", "2a02", "2600"])
        if r.random() < 0.5:
            return ":".join(groups)
        return ":".join(groups[:2]) + "::" + ":".join(groups[5:])

    def secret(self) -> str:
        r = self.r
        kind = r.randrange(7)
        if kind == 0:
            return "sk-proj-" + self.alnum(r.randrange(24, 48))
        if kind == 1:
            return "AKIA" + self.alnum(16, string.ascii_uppercase + string.digits)
        if kind == 2:
            return "ghp_" + self.alnum(36)
        if kind == 3:
            return f"xoxb-{self.digits(11)}-{self.digits(12)}-{self.alnum(24)}"
        if kind == 4:
            def b64(obj):
                return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
            return (b64({"alg": "HS256", "typ": "JWT"}) + "." +
                    b64({"sub": self.digits(8), "name": r.choice(FIRST), "iat": 1710000000})
                    + "." + self.alnum(43, string.ascii_letters + string.digits + "-_"))
        if kind == 5:
            return "sk_live_" + self.alnum(24)
        lines = [self.alnum(64, string.ascii_letters + string.digits + "+/") for _ in range(3)]
        return ("-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----")

    # ---- hard negatives ----
    def order(self) -> str:
        return self.r.choice([f"ORD-2024-{self.digits(6)}", f"#{self.digits(5)}-{self.digits(2)}",
                              f"INV-{self.digits(4)}-{self.digits(5)}", f"PO{self.digits(8)}",
                              f"A{self.digits(3)}-{self.digits(7)}-{self.digits(7)}"])

    def timestamp(self) -> str:
        r = self.r
        y, mo, d, h, mi, s = (2024, r.randrange(1, 13), r.randrange(1, 29), r.randrange(24),
                              r.randrange(60), r.randrange(60))
        return r.choice([f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z",
                         f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d},{r.randrange(1000):03d}",
                         f"{d:02d}/{mo:02d}/{y} {h:02d}:{mi:02d}", f"{d:02d}.{mo:02d}.{y}",
                         f"17{self.digits(11)}", f"{h:02d}:{mi:02d}:{s:02d}.{self.digits(6)}"])

    def version(self) -> str:
        r = self.r
        return r.choice([f"v{r.randrange(1, 5)}.{r.randrange(30)}.{r.randrange(30)}",
                         f"{r.randrange(1, 30)}.{r.randrange(20)}.{r.randrange(20)}",
                         f"1.{r.randrange(40)}.{r.randrange(9)}.{r.randrange(9)}",
                         f"10.0.{r.randrange(19000, 22700)}.{r.randrange(100, 4000)}",
                         f"Chrome/{r.randrange(100, 125)}.0.0.0",
                         f"{r.randrange(2, 5)}.{r.randrange(20)}.{r.randrange(10)}-rc{r.randrange(1, 4)}"])

    def uuid(self) -> str:
        h = self.alnum(32, "0123456789abcdef")
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def hash(self) -> str:
        return self.alnum(self.r.choice([7, 12, 40, 64]), "0123456789abcdef")

    def tracking(self) -> str:
        return self.r.choice([f"1Z{self.alnum(6, string.ascii_uppercase + string.digits)}{self.digits(10)}",
                              f"9400 1{self.digits(3)} {self.digits(4)} {self.digits(4)} {self.digits(4)} "
                              f"{self.digits(4)} {self.digits(2)}", f"{self.digits(12)}",
                              f"JJD{self.digits(18)}", f"LX{self.digits(9)}DE"])

    def isbn(self) -> str:
        return self.r.choice([f"978-3-{self.digits(2)}-{self.digits(6)}-{self.digits(1)}",
                              f"0-306-{self.digits(5)}-{self.digits(1)}", f"978{self.digits(10)}"])

    def badcard(self) -> str:
        card = self.card()
        last = card[-1]
        return card[:-1] + str((int(last) + self.r.randrange(1, 10)) % 10)

    def serial(self) -> str:
        return self.r.choice([f"SN {self.digits(4)}-{self.digits(4)}-{self.digits(4)}",
                              f"S/N: {self.digits(3)}-{self.digits(3)}-{self.digits(4)}",
                              f"Serial No. {self.digits(3)}.{self.digits(3)}.{self.digits(4)}",
                              f"part #{self.digits(3)}-{self.digits(3)}-{self.digits(4)}",
                              f"order no. {self.digits(3)}-{self.digits(3)}-{self.digits(4)}",
                              f"ticket {self.digits(3)}-{self.digits(2)}-{self.digits(4)}"])

    def money(self) -> str:
        return self.r.choice([f"${self.r.randrange(1, 99)},{self.digits(3)}.{self.digits(2)}",
                              f"{self.r.randrange(1, 999)},{self.digits(2)} €",
                              f"USD {self.r.randrange(1, 99999)}.{self.digits(2)}"])


POSITIVE = {"email", "phone", "card", "iban", "ssn", "ip", "secret"}

# (source, lang, template); {slot} names a Gen method. Positives are labelled with the slot's type.
TEMPLATES = [
    ("ticket", "en", "Hi, I'm locked out. My account email is {email} and you can call me on {phone}. Ticket opened {timestamp}."),
    ("ticket", "en", "Refund request for order {order}: I was charged twice on card {card}. Please refund to IBAN {iban}."),
    ("ticket", "en", "The app crashes on {version} when I log in. Device {serial}, build hash {hash}. Reach me at {email}."),
    ("ticket", "en", "I moved, please update my file. SSN {ssn}, new phone {phone}, invoice {order} is still open."),
    ("ticket", "en", "Package {tracking} never arrived (order {order}, placed {timestamp}). My number is {phone}."),
    ("ticket", "en", "Your form rejected my card {badcard} — is it the same as the one ending in the last four digits? Order {order}."),
    ("ticket", "de", "Hallo, bitte ändern Sie meine Bankverbindung auf {iban}. Rückfragen gerne unter {phone} oder {email}."),
    ("ticket", "de", "Bestellung {order} vom {timestamp}: Sendungsnummer {tracking}, Rechnung über {money}."),
    ("ticket", "fr", "Bonjour, je n'arrive pas à payer avec la carte {card}. Mon numéro : {phone}, mon e-mail : {email}."),
    ("ticket", "fr", "Commande {order} du {timestamp} : le colis {tracking} est bloqué. Version de l'appli {version}."),
    ("ticket", "es", "Hola, mi correo es {email} y mi teléfono {phone}. El pedido {order} llegó dañado."),
    ("ticket", "es", "Quiero cambiar la cuenta de cobro a {iban}; la tarjeta {card} ya no es válida."),
    ("ticket", "pt", "Olá, meu e-mail é {email} e o celular {phone}. O pedido {order} ainda não chegou."),
    ("log", "en", "{timestamp} INFO auth: login ok user={email} ip={ip} ua=\"Mozilla/5.0 {version}\" req={uuid}"),
    ("log", "en", "{timestamp} WARN payments: declined pan={card} reason=insufficient_funds order={order}"),
    ("log", "en", "{timestamp} ERROR upstream {ip}:8443 timed out after 30s (trace {hash}, release {version})"),
    ("log", "en", "{timestamp} DEBUG config loaded OPENAI_API_KEY={secret} region=eu-west-1 build={hash}"),
    ("log", "en", "{timestamp} INFO shipment {tracking} label printed for order {order}, weight 2.4 kg"),
    ("log", "en", "[{timestamp}] sshd[2231]: Accepted publickey for deploy from {ip} port 52814 ssh2"),
    ("log", "en", "{timestamp} INFO job {uuid} finished in 12.4s, commit {hash}, image tag {version}"),
    ("log", "en", "{timestamp} ERROR card check failed for {badcard} (Luhn), customer {email}"),
    ("code", "en", "import os\nclient = OpenAI(api_key=\"{secret}\")  # TODO move to env\nprint(client.models.list())"),
    ("code", "en", "AWS_ACCESS_KEY_ID={secret}\nAWS_REGION=us-east-1\nDB_HOST={ip}\nAPP_VERSION={version}"),
    ("code", "en", "curl -H \"Authorization: Bearer {secret}\" https://api.example.com/v1/users/{uuid}"),
    ("code", "en", "def test_charge():\n    charge(card=\"{card}\", amount=1999, idempotency_key=\"{uuid}\")\n    assert order_id == \"{order}\""),
    ("code", "en", "{secret}\n# pasted from the server, is this the right key for deploy?"),
    ("code", "en", "SELECT * FROM customers WHERE email = '{email}' AND created_at > '{timestamp}';"),
    ("code", "en", "requirements: numpy=={version}, torch=={version}; pinned sha256:{hash}"),
    ("code", "en", "server {{\n  listen 443;\n  server_name api.example.com;\n  allow {ip};\n  deny all;\n}}"),
    ("email", "en", "From: {email}\nTo: {email}\nSubject: Invoice {order}\n\nHi, please find attached the invoice for {money}. Call me at {phone} if anything is unclear."),
    ("email", "en", "Dear team, the new hire's SSN is {ssn} and her direct line is {phone}. Her start date is {timestamp}."),
    ("email", "de", "Sehr geehrte Damen und Herren,\nbitte überweisen Sie {money} auf das Konto {iban}. Mit freundlichen Grüßen, {email}"),
    ("email", "fr", "Bonjour,\nvoici mon RIB : {iban}. Vous pouvez me joindre au {phone}.\nCordialement"),
    ("email", "es", "Estimados:\nadjunto la factura {order} ({money}). Para dudas escriban a {email}."),
    ("chat", "en", "can you summarise this? customer {email} says card {card} was charged {money} on {timestamp}"),
    ("chat", "en", "my ssn is {ssn}, can you fill in the tax form for me? my phone is {phone}"),
    ("chat", "en", "Why does ISBN {isbn} not validate in my script? It prints {hash} as checksum."),
    ("chat", "en", "translate to German: 'your package {tracking} ships with order {order} on {timestamp}'"),
    ("chat", "en", "debug this: connection refused to {ip} while the other host {ip} works"),
    ("chat", "en", "is {badcard} a valid test card number? it fails in our checkout on {version}"),
    ("chat", "en", "Here is my key {secret}, why does it return 401?"),
    ("csv", "en", "id,name,email,phone,iban\n{uuid},Ana Silva,{email},{phone},{iban}"),
    ("csv", "en", "order,date,tracking,amount\n{order},{timestamp},{tracking},{money}"),
    ("json", "en", "{{\"user\": {{\"email\": \"{email}\", \"ssn\": \"{ssn}\", \"last_ip\": \"{ip}\"}}, \"version\": \"{version}\"}}"),
    ("json", "en", "{{\"event\": \"checkout\", \"order\": \"{order}\", \"ts\": \"{timestamp}\", \"isbn\": \"{isbn}\", \"sku\": \"{serial}\"}}"),
    ("ticket", "en", "Device registration: {serial}, firmware {version}, MAC 00:1a:2b:{hash2}, uptime 12:04:33."),
]


def render(gen: Gen, template: str):
    """(text, spans) for one template filled with fresh values."""
    out, spans, pos = [], [], 0
    i = 0
    while i < len(template):
        ch = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            out.append(ch)
            pos += 1
            i += 2
            continue
        if ch == "{":
            end = template.index("}", i)
            slot = template[i + 1:end]
            value = (gen.alnum(2, "0123456789abcdef") + ":" + gen.alnum(2, "0123456789abcdef")
                     + ":" + gen.alnum(2, "0123456789abcdef")) if slot == "hash2" else getattr(gen, slot)()
            if slot in POSITIVE:
                spans.append([pos, pos + len(value), slot])
            out.append(value)
            pos += len(value)
            i = end + 1
            continue
        out.append(ch)
        pos += 1
        i += 1
    return "".join(out), spans


def build() -> list[dict]:
    gen = Gen(random.Random(SEED))
    rows = []
    for copy in range(COPIES):
        for t, (source, lang, template) in enumerate(TEMPLATES):
            text, spans = render(gen, template)
            rows.append({"id": f"{source}-{t}-{copy}", "source": source, "lang": lang,
                         "text": text, "spans": spans})
    return rows


def main() -> None:
    with OUT.open("w") as f:
        for row in build():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(build())} examples)")


if __name__ == "__main__":
    main()
