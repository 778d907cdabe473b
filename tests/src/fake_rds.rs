//! A scripted fake of the RDS Query API on loopback, for the status sequences and faults
//! moto cannot produce. It speaks the real wire protocol (form-encoded POST, XML answers,
//! `<ErrorResponse>` errors), so the provisioner's one SDK code path is what is tested.
//!
//! Each instance has a status script: a describe answers the first status and drops it
//! while more follow, so `["creating", "backing-up", "available"]` plays out over three
//! describes and then stays `available`.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// An error answer for the next call of an action.
#[derive(Clone, Debug)]
pub struct Fault {
    pub code: &'static str,
    pub http_status: u16,
    /// Do the call's work first, then answer with the error (a create that "failed" after
    /// the instance was made).
    pub after_effect: bool,
}

impl Fault {
    pub fn throttling() -> Self {
        Self {
            code: "Throttling",
            http_status: 400,
            after_effect: false,
        }
    }

    /// A fault RDS answers at once and retrying does not cure.
    pub fn permanent(code: &'static str) -> Self {
        Self {
            code,
            http_status: 400,
            after_effect: false,
        }
    }

    pub fn internal_after_effect() -> Self {
        Self {
            code: "InternalFailure",
            http_status: 500,
            after_effect: true,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FakeInstance {
    pub statuses: VecDeque<String>,
    pub tags: Vec<(String, String)>,
    pub deletion_protection: bool,
    /// Describes that answer DBInstanceNotFound before the instance shows.
    pub hidden_describes: u32,
    pub modified: bool,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<String, FakeInstance>,
    /// snapshot id -> instance id
    snapshots: BTreeMap<String, String>,
    calls: Vec<String>,
    faults: BTreeMap<String, VecDeque<Fault>>,
    create_script: Vec<String>,
    hide_after_create: u32,
}

pub struct FakeRds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeRds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRds {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake rds binds");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            create_script: vec!["available".into()],
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Self { addr, state, task }
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("fake state"))
    }

    /// Statuses the next created instances go through.
    pub fn script_create(&self, statuses: &[&str]) {
        self.with(|s| s.create_script = statuses.iter().map(|s| (*s).to_owned()).collect());
    }

    /// New instances answer NotFound to this many describes after their create.
    pub fn hide_new_instances(&self, describes: u32) {
        self.with(|s| s.hide_after_create = describes);
    }

    /// Answers the next call of `action` with `fault`.
    pub fn fail_next(&self, action: &str, fault: Fault) {
        self.with(|s| s.faults.entry(action.into()).or_default().push_back(fault));
    }

    pub fn insert_instance(&self, id: &str, instance: FakeInstance) {
        self.with(|s| s.instances.insert(id.into(), instance));
    }

    pub fn set_status(&self, id: &str, status: &str) {
        self.with(|s| {
            if let Some(instance) = s.instances.get_mut(id) {
                instance.statuses = VecDeque::from([status.to_owned()]);
            }
        });
    }

    /// Makes an instance vanish, as if RDS lost it.
    pub fn remove_instance(&self, id: &str) {
        self.with(|s| s.instances.remove(id));
    }

    pub fn instance(&self, id: &str) -> Option<FakeInstance> {
        self.with(|s| s.instances.get(id).cloned())
    }

    pub fn instance_count(&self) -> usize {
        self.with(|s| s.instances.len())
    }

    /// Snapshots taken from `instance`.
    pub fn snapshots_of(&self, instance: &str) -> Vec<String> {
        self.with(|s| {
            s.snapshots
                .iter()
                .filter(|(_, source)| *source == instance)
                .map(|(id, _)| id.clone())
                .collect()
        })
    }

    /// How many calls of `action` arrived (failed ones included).
    pub fn calls(&self, action: &str) -> usize {
        self.with(|s| s.calls.iter().filter(|c| *c == action).count())
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let header_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let total = header_end + 4 + length;
        while buf.len() < total {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = String::from_utf8_lossy(&buf[header_end + 4..total]).to_string();
        buf.drain(..total);
        let (status, xml) = {
            let mut state = state.lock().expect("fake state");
            handle(&mut state, &form(&body))
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{xml}",
            xml.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const NS: &str = "http://rds.amazonaws.com/doc/2014-10-31/";

fn error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        format!(
            "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code>\
             <Message>{}</Message></Error><RequestId>fake</RequestId></ErrorResponse>",
            escape(message)
        ),
    )
}

fn ok(action: &str, result: &str) -> (u16, String) {
    (
        200,
        format!(
            "<{action}Response xmlns=\"{NS}\"><{action}Result>{result}</{action}Result>\
             <ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></{action}Response>"
        ),
    )
}

fn instance_xml(id: &str, instance: &FakeInstance, status: &str) -> String {
    let tags: String = instance
        .tags
        .iter()
        .map(|(k, v)| {
            format!(
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                escape(k),
                escape(v)
            )
        })
        .collect();
    format!(
        "<DBInstance><DBInstanceIdentifier>{id}</DBInstanceIdentifier>\
         <DBInstanceStatus>{status}</DBInstanceStatus><Engine>postgres</Engine>\
         <MasterUsername>postgres</MasterUsername>\
         <DBInstanceArn>arn:aws:rds:us-east-1:123456789012:db:{id}</DBInstanceArn>\
         <Endpoint><Address>{id}.fake.us-east-1.rds.amazonaws.com</Address><Port>5432</Port></Endpoint>\
         <DeletionProtection>{}</DeletionProtection><StorageEncrypted>true</StorageEncrypted>\
         <TagList>{tags}</TagList></DBInstance>",
        instance.deletion_protection
    )
}

fn tags(params: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut by_index: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, value) in params {
        let Some(rest) = key.strip_prefix("Tags.") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let [.., index, field] = parts.as_slice() else {
            continue;
        };
        let entry = by_index.entry((*index).to_owned()).or_default();
        match *field {
            "Key" => entry.0.clone_from(value),
            "Value" => entry.1.clone_from(value),
            _ => {}
        }
    }
    by_index.into_values().collect()
}

fn handle(state: &mut State, params: &BTreeMap<String, String>) -> (u16, String) {
    let action = params.get("Action").cloned().unwrap_or_default();
    state.calls.push(action.clone());
    let fault = state.faults.get_mut(&action).and_then(VecDeque::pop_front);
    if let Some(fault) = &fault
        && !fault.after_effect
    {
        return error(fault.http_status, fault.code, "scripted fault");
    }
    let answer = act(state, &action, params);
    match fault {
        Some(fault) => error(fault.http_status, fault.code, "scripted fault after effect"),
        None => answer,
    }
}

fn act(state: &mut State, action: &str, params: &BTreeMap<String, String>) -> (u16, String) {
    let id = params
        .get("DBInstanceIdentifier")
        .cloned()
        .unwrap_or_default();
    let not_found = || error(404, "DBInstanceNotFound", "DBInstance not found");
    match action {
        "CreateDBInstance" => {
            if state.instances.contains_key(&id) {
                return error(400, "DBInstanceAlreadyExists", "DB instance already exists");
            }
            let instance = FakeInstance {
                statuses: state.create_script.iter().cloned().collect(),
                tags: tags(params),
                deletion_protection: params
                    .get("DeletionProtection")
                    .is_some_and(|v| v == "true"),
                hidden_describes: state.hide_after_create,
                modified: false,
            };
            let xml = instance_xml(&id, &instance, "creating");
            state.instances.insert(id, instance);
            ok(action, &xml)
        }
        "DescribeDBInstances" => {
            if id.is_empty() {
                let all: String = state
                    .instances
                    .iter()
                    .map(|(id, i)| {
                        instance_xml(
                            id,
                            i,
                            i.statuses.front().map_or("available", String::as_str),
                        )
                    })
                    .collect();
                return ok(action, &format!("<DBInstances>{all}</DBInstances>"));
            }
            let Some(instance) = state.instances.get_mut(&id) else {
                return not_found();
            };
            if instance.hidden_describes > 0 {
                instance.hidden_describes -= 1;
                return not_found();
            }
            let status = instance
                .statuses
                .front()
                .cloned()
                .unwrap_or_else(|| "available".into());
            if instance.statuses.len() > 1 {
                instance.statuses.pop_front();
            }
            let xml = instance_xml(&id, instance, &status);
            if status == "gone" {
                state.instances.remove(&id);
                return not_found();
            }
            ok(action, &format!("<DBInstances>{xml}</DBInstances>"))
        }
        "ModifyDBInstance" => {
            let Some(instance) = state.instances.get_mut(&id) else {
                return not_found();
            };
            if let Some(value) = params.get("DeletionProtection") {
                instance.deletion_protection = value == "true";
            }
            instance.modified = true;
            let xml = instance_xml(&id, instance, "available");
            ok(action, &xml)
        }
        "DeleteDBInstance" => {
            let Some(instance) = state.instances.get(&id) else {
                return not_found();
            };
            if instance.deletion_protection {
                return error(
                    400,
                    "InvalidParameterCombination",
                    "deletion protection is on",
                );
            }
            let skip = params.get("SkipFinalSnapshot").is_some_and(|v| v == "true");
            if !skip {
                let Some(snapshot) = params.get("FinalDBSnapshotIdentifier") else {
                    return error(
                        400,
                        "InvalidParameterCombination",
                        "a final snapshot is required",
                    );
                };
                if state.snapshots.contains_key(snapshot) {
                    return error(400, "DBSnapshotAlreadyExists", "snapshot exists");
                }
                state.snapshots.insert(snapshot.clone(), id.clone());
            }
            let instance = state.instances.get_mut(&id).expect("checked above");
            instance.statuses = VecDeque::from(["deleting".to_owned(), "gone".to_owned()]);
            let xml = instance_xml(&id, instance, "deleting");
            ok(action, &xml)
        }
        "DescribeDBSnapshots" => {
            let wanted = params
                .get("DBSnapshotIdentifier")
                .cloned()
                .unwrap_or_default();
            match state.snapshots.get(&wanted) {
                Some(source) => ok(
                    action,
                    &format!(
                        "<DBSnapshots><DBSnapshot><DBSnapshotIdentifier>{wanted}</DBSnapshotIdentifier>\
                         <DBInstanceIdentifier>{source}</DBInstanceIdentifier><Status>available</Status>\
                         </DBSnapshot></DBSnapshots>"
                    ),
                ),
                None => error(404, "DBSnapshotNotFound", "snapshot not found"),
            }
        }
        other => error(
            400,
            "InvalidAction",
            &format!("the fake does not know {other}"),
        ),
    }
}
