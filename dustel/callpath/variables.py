"""Channel / dialplan variable names, shared by the rendered dialplans, the
FastAGI and outbound-ESL handlers, and the tests (one place, like Wazo's
dialplan_variables)."""

TENANT = "DUSTEL_TENANT"            # tenant id
ACCOUNT = "DUSTEL_ACCOUNT"          # SIP username of the calling / called account
TARGET_KIND = "DUSTEL_TARGET_KIND"  # inbound: account | queue | fax | group
TARGET = "DUSTEL_TARGET"            # inbound: username / queue / fax box / group name
PSAP_PREFIX = "DUSTEL_PSAP_PREFIX"  # emergency route prefix of the account's area
CALLER_ID = "DUSTEL_CALLER_ID"      # caller ID the account presents
ACTION = "DUSTEL_ACTION"            # policy result: admit | refuse
DIAL = "DUSTEL_DIAL"                # policy result: dial string
MAX_SECONDS = "DUSTEL_MAX_SECONDS"  # policy result: absolute time limit
CAUSE = "DUSTEL_CAUSE"              # policy result: Q.850 hangup cause when refused
SIP_CODE = "DUSTEL_SIP_CODE"        # policy result: SIP response code when refused (policy.REFUSALS)
REASON = "DUSTEL_REASON"            # policy result: reason code (logged, announced)
QUEUE_OPEN = "DUSTEL_QUEUE_OPEN"    # inbound to a queue: 1 open, 0 closed (opening hours)
CLOSED_ANNOUNCE = "DUSTEL_CLOSED_ANNOUNCE"  # closed queue: sound to play
CLOSED_DIAL = "DUSTEL_CLOSED_DIAL"  # closed queue: where to send the caller ('' hang up)
CLOSED_MAX = "DUSTEL_CLOSED_MAX"    # closed queue, external target: the leg's time limit (its policy decision)
CLOSED_CALLER_ID = "DUSTEL_CLOSED_CALLER_ID"  # … and the number it presents
DDI_NUMBER = "DUSTEL_DDI_NUMBER"    # inbound to a DDI block: the dialled number the PBX behind gets (RURI/To)
LEG = "DUSTEL_LEG"                  # 1: this call placed a leg (<call id>:leg) the hangup handler settles too
QUEUE_MAX_WAIT = "DUSTEL_QUEUE_MAX_WAIT"  # inbound to a queue: the queue's max wait (Queue() timeout)
# inbound to an account / ring group: the stages of divert, n = 1, 2 — DUSTEL_S<n>_ACCOUNTS (a&b: every
# registered contact of each rings), _EXTERNAL (dial string of its admitted external legs), _SECONDS (ring
# time), _MAX (time limit once answered); DUSTEL_S2_GO (1: stage 2 runs; set by next_stage after stage 1)
STAGE = "DUSTEL_S"
LOGO = "DUSTEL_LOGO"                # inbound: the sound logo to play before the call is put through ('' none)
EXT_CALLER_ID = "DUSTEL_EXT_CALLER_ID"  # the number external legs present (the tenant's, or CLIP no screening)
# FreeSWITCH: true, a socket that ends before the policy server took the call's plan goes on in the
# dialplan (to the refusal); the server sets it false with its plan, the dialplan at answer
SOCKET_RESUME = "socket_resume"
# FreeSWITCH behind the SIP edge (F-14): the phone's address as the edge saw it (ip:port), set by the
# rendered public context from the edge's header only — a phone cannot set a channel variable
EDGE_SOURCE = "dustel_edge_source"
# the headers the edge adds (and strips from everything a phone or carrier sends): a carrier's call
# marked ``<EDGE_MARK_HEADER>: carrier``, a phone's call with its address as ip:port
EDGE_MARK_HEADER = "X-Dustel-Edge"
EDGE_SOURCE_HEADER = "X-Dustel-Source"

# Routes on the FastAGI server (agi://host:port/<route>) and the outbound
# Event Socket: one handler per route.
ROUTE_OUTBOUND = "outbound"
ROUTE_INBOUND = "inbound"
ROUTE_AGENT = "agent"
ROUTE_HANGUP = "hangup"
ROUTE_QUEUE_RESULT = "queue_result"      # after Queue(): QUEUESTATUS for the statistics
ROUTE_AGENT_LEG = "agent_leg"            # an agent on an external number: an outbound leg of the tenant
ROUTE_FAX = "fax"                        # ReceiveFAX ended: the fax to e-mail (fax.inbound)
ROUTE_FAX_OUT = "fax_out"                # a fax job's call: the policy decides it as an outbound leg of the tenant
ROUTE_FAX_RESULT = "fax_result"          # a fax job's attempt ended: FAX / DIAL / REFUSED and its status
ROUTE_FAX_SEND = "fax_send"              # FreeSWITCH: a fax job's answered call runs txfax (dustel-fax-send)
FAX_JOB = "DUSTEL_FAX_JOB"               # the fax job a call-file call belongs to
FETCH_PATH = "/dialplan"                 # FreeSWITCH's dialplan fetch (mod_xml_curl): POST http://host:port<this>
ROUTE_NEXT_STAGE = "next_stage"          # an account's / group's stage 1 ended unanswered: what follows, read now

# FreeSWITCH: what a tenant's context (t<id>) takes as an emergency call (the first extension: straight to the
# PSAP, never a policy server) and as an outbound call (the policy decides); the rendered dialplan and the
# dialplan fetch server (agi.freeswitch.fetched_channel) read the same patterns
FS_EMERGENCY = r"^(?:0|00|\+49|0049)?(11[02])$"
FS_OUTBOUND = r"^([+]?[0-9*#]{1,32})$"

# Star codes (F-06), configurable per provider in a later step.
STAR_LOGIN = "*51"
STAR_LOGOUT = "*52"
STAR_PAUSE = "*53"
STAR_UNPAUSE = "*54"
SPEED_DIAL_PREFIX = "**"
