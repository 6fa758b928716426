//! One type per RPC method, tying its service and name to its request and response messages.

use crate::pb;

/// Service name of the health service.
pub const HEALTH_SERVICE: &str = "capsule.agent.v1.Health";
/// Service name of the agent service.
pub const AGENT_SERVICE: &str = "capsule.agent.v1.Agent";
/// Service name of the upcall service (served by the host).
pub const UPCALL_SERVICE: &str = "capsule.agent.v1.Upcall";

/// An RPC method.
pub trait Method {
    const SERVICE: &'static str;
    const NAME: &'static str;
    type Request: prost::Message + Default + Clone;
    type Response: prost::Message + Default + Clone;
}

macro_rules! methods {
    ($( $service:ident { $( $name:ident ( $req:ident ) -> $resp:ident ; )* } )*) => {
        $($(
            #[doc = concat!("`", stringify!($service), ".", stringify!($name), "`.")]
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Method for $name {
                const SERVICE: &'static str = $service;
                const NAME: &'static str = stringify!($name);
                type Request = pb::$req;
                type Response = pb::$resp;
            }
        )*)*
        /// Every (service, method) pair of the API.
        pub const ALL: &[(&str, &str)] = &[ $($( ($service, stringify!($name)), )*)* ];
    };
}

methods! {
    HEALTH_SERVICE {
        Check(CheckRequest) -> HealthCheckResponse;
        Version(CheckRequest) -> VersionCheckResponse;
    }
    AGENT_SERVICE {
        CreateContainer(CreateContainerRequest) -> CreateContainerResponse;
        ListContainers(ListContainersRequest) -> ListContainersResponse;
        Mount(MountRequest) -> Empty;
        Exec(ExecRequest) -> ExecResponse;
        WaitProcess(WaitProcessRequest) -> WaitProcessResponse;
        SignalProcess(SignalProcessRequest) -> Empty;
        ResizeTty(ResizeTtyRequest) -> Empty;
        CloseStdin(CloseStdinRequest) -> Empty;
        ListProcesses(ContainerRef) -> ListProcessesResponse;
        ConnectSocket(ConnectSocketRequest) -> ConnectSocketResponse;
        ListenSocket(ListenSocketRequest) -> ListenSocketResponse;
        CloseListener(CloseListenerRequest) -> Empty;
        AddKey(AddKeyRequest) -> AddKeyResponse;
        ListKeys(ContainerRef) -> ListKeysResponse;
        KillContainer(KillContainerRequest) -> Empty;
        FreezeContainer(ContainerRef) -> Empty;
        ThawContainer(ContainerRef) -> Empty;
        Shutdown(ShutdownRequest) -> Empty;
        ConfigureNetwork(ConfigureNetworkRequest) -> Empty;
        SetNamespaces(SetNamespacesRequest) -> Empty;
        RebootContainer(ContainerRef) -> RebootContainerResponse;
        SetCgroup(SetCgroupRequest) -> Empty;
        SetRoot(SetRootRequest) -> Empty;
        SetPolicy(SetPolicyRequest) -> Empty;
        SetDevices(SetDevicesRequest) -> Empty;
        ContainerStats(ContainerRef) -> ContainerStatsResponse;
        SetResources(SetResourcesRequest) -> Empty;
        FinishRoot(FinishRootRequest) -> Empty;
    }
    UPCALL_SERVICE {
        RequestKey(UpcallRequest) -> UpcallResponse;
    }
}
